// gguf_ref: a small reference harness over llama.cpp's C API (libllama), used only to
// produce the GGUF fidelity fixtures under tests/fixtures/. It is never built in CI.
//
// Build: scripts/reference/llama_cpp.sh (compiles this file against the libllama it builds).
//
// Usage (a JSON request on stdin, a JSON answer on stdout; llama.cpp's log goes to stderr,
// warnings and errors only unless GGUF_REF_VERBOSE=1):
//
//   gguf_ref tokenize MODEL.gguf   <<< '{"strings":["a","b"],"add_special":true,"parse_special":false}'
//       -> [[ids of "a"], [ids of "b"]]
//       Loads the vocabulary only and calls llama_tokenize with exactly those two flags.
//
//   gguf_ref greedy MODEL.gguf     <<< '{"prompt":[1,2,3],"n":32,"top":64}'
//       -> {"n_vocab":V, "tokens":[...], "margins":[...], "logits0":...}
//       CPU only, 2 threads, llama.cpp's default model and context parameters otherwise
//       (weight repacking on, flash attention "auto", F16 KV cache, n_ctx 512 unless the
//       request needs more). The prompt is decoded as one batch, then one token at a time.
//       Each step takes the argmax of the raw logits (ties go to the lowest id) and never
//       stops at an end-of-generation token. margins[i] is top1 - top2 of step i's logits.
//       logits0 (the logits after the prompt): when V <= 4096 the full list of V floats;
//       otherwise {"top":[[id, logit], ...] (the `top` largest, descending, ties by id),
//       "logsumexp": log(sum(exp(logit))) over the whole vocabulary, in double}.
//
//   gguf_ref info MODEL.gguf
//       -> {"n_vocab", "bos", "eos", "add_bos", "add_eos", "vocab_type"} (vocabulary only)

#include "llama.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

using json = nlohmann::json;

namespace {

bool g_verbose = false;

void log_filter(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

[[noreturn]] void fail(const std::string & msg) {
    std::fprintf(stderr, "gguf_ref: %s\n", msg.c_str());
    std::exit(1);
}

json read_request() {
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (text.empty()) {
        return json::object();
    }
    try {
        return json::parse(text);
    } catch (const std::exception & e) {
        fail(std::string("bad JSON request: ") + e.what());
    }
}

llama_model * load(const std::string & path, bool vocab_only) {
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = vocab_only;
    mp.n_gpu_layers = 0;  // CPU only (no GPU backend is built anyway)
    llama_model * model = llama_model_load_from_file(path.c_str(), mp);
    if (model == nullptr) {
        fail("could not load " + path);
    }
    return model;
}

std::vector<llama_token> tokenize_one(const llama_vocab * vocab, const std::string & s,
                                      bool add_special, bool parse_special) {
    std::vector<llama_token> ids(s.size() + 8);
    int32_t n = llama_tokenize(vocab, s.data(), (int32_t) s.size(), ids.data(), (int32_t) ids.size(),
                               add_special, parse_special);
    if (n < 0) {
        ids.resize((size_t) -n);
        n = llama_tokenize(vocab, s.data(), (int32_t) s.size(), ids.data(), (int32_t) ids.size(),
                           add_special, parse_special);
        if (n < 0) {
            fail("llama_tokenize failed twice");
        }
    }
    ids.resize((size_t) n);
    return ids;
}

int cmd_tokenize(const std::string & path) {
    json req = read_request();
    const bool add_special   = req.value("add_special", false);
    const bool parse_special = req.value("parse_special", false);
    llama_model * model = load(path, true);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    json out = json::array();
    for (const auto & s : req.at("strings")) {
        out.push_back(tokenize_one(vocab, s.get<std::string>(), add_special, parse_special));
    }
    std::cout << out.dump() << "\n";
    llama_model_free(model);
    return 0;
}

int cmd_info(const std::string & path) {
    llama_model * model = load(path, true);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    json out = {
        {"n_vocab", llama_vocab_n_tokens(vocab)},
        {"bos", llama_vocab_bos(vocab)},
        {"eos", llama_vocab_eos(vocab)},
        {"add_bos", llama_vocab_get_add_bos(vocab)},
        {"add_eos", llama_vocab_get_add_eos(vocab)},
        {"vocab_type", (int) llama_vocab_type(vocab)},
    };
    std::cout << out.dump() << "\n";
    llama_model_free(model);
    return 0;
}

// Index of the largest logit (lowest id on ties) and top1 - top2.
void argmax_margin(const float * logits, int n_vocab, int & best, double & margin) {
    best = 0;
    for (int i = 1; i < n_vocab; ++i) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    float second = -INFINITY;
    for (int i = 0; i < n_vocab; ++i) {
        if (i != best && logits[i] > second) {
            second = logits[i];
        }
    }
    margin = (double) logits[best] - (double) second;
}

json logits_summary(const float * logits, int n_vocab, int top) {
    if (n_vocab <= 4096) {
        json all = json::array();
        for (int i = 0; i < n_vocab; ++i) {
            all.push_back((double) logits[i]);
        }
        return all;
    }
    std::vector<int> order(n_vocab);
    for (int i = 0; i < n_vocab; ++i) {
        order[i] = i;
    }
    const int k = std::min(std::max(top, 1), n_vocab);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
        return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    json pairs = json::array();
    for (int i = 0; i < k; ++i) {
        pairs.push_back(json::array({order[i], (double) logits[order[i]]}));
    }
    double mx = -INFINITY;
    for (int i = 0; i < n_vocab; ++i) {
        mx = std::max(mx, (double) logits[i]);
    }
    double sum = 0.0;
    for (int i = 0; i < n_vocab; ++i) {
        sum += std::exp((double) logits[i] - mx);
    }
    return json{{"top", pairs}, {"logsumexp", mx + std::log(sum)}};
}

int cmd_greedy(const std::string & path) {
    json req = read_request();
    const std::vector<llama_token> prompt = req.at("prompt").get<std::vector<llama_token>>();
    const int n_gen = req.value("n", 32);
    const int top   = req.value("top", 64);
    if (prompt.empty() || n_gen < 1) {
        fail("greedy needs a non-empty prompt and n >= 1");
    }

    llama_model * model = load(path, false);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cp = llama_context_default_params();
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    const uint32_t needed = (uint32_t) (prompt.size() + (size_t) n_gen);
    if (needed > cp.n_ctx) {
        cp.n_ctx = (needed + 255) / 256 * 256;
    }
    if (prompt.size() > cp.n_batch) {
        cp.n_batch = (uint32_t) prompt.size();
    }
    if (prompt.size() > cp.n_ubatch) {
        cp.n_ubatch = (uint32_t) prompt.size();
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        fail("could not create a context");
    }

    llama_batch batch = llama_batch_init((int32_t) prompt.size(), 0, 1);
    batch.n_tokens = (int32_t) prompt.size();
    for (size_t i = 0; i < prompt.size(); ++i) {
        batch.token[i] = prompt[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = (i + 1 == prompt.size()) ? 1 : 0;
    }
    if (llama_decode(ctx, batch) != 0) {
        fail("llama_decode failed on the prompt");
    }

    json tokens = json::array();
    json margins = json::array();
    json logits0;
    llama_pos pos = (llama_pos) prompt.size();
    for (int step = 0; step < n_gen; ++step) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (logits == nullptr) {
            fail("no logits");
        }
        if (step == 0) {
            logits0 = logits_summary(logits, n_vocab, top);
        }
        int best = 0;
        double margin = 0.0;
        argmax_margin(logits, n_vocab, best, margin);
        tokens.push_back(best);
        margins.push_back(margin);
        if (step + 1 == n_gen) {
            break;
        }
        batch.n_tokens = 1;
        batch.token[0] = best;
        batch.pos[0] = pos++;
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = 0;
        batch.logits[0] = 1;
        if (llama_decode(ctx, batch) != 0) {
            fail("llama_decode failed at step " + std::to_string(step));
        }
    }

    json out = {{"n_vocab", n_vocab}, {"tokens", tokens}, {"margins", margins}, {"logits0", logits0}};
    std::cout << out.dump() << "\n";

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s tokenize|greedy|info MODEL.gguf < request.json\n", argv[0]);
        return 2;
    }
    const char * v = std::getenv("GGUF_REF_VERBOSE");
    g_verbose = v != nullptr && std::strcmp(v, "0") != 0;
    llama_log_set(log_filter, nullptr);
    llama_backend_init();

    const std::string cmd = argv[1];
    const std::string path = argv[2];
    int rc = 2;
    if (cmd == "tokenize") {
        rc = cmd_tokenize(path);
    } else if (cmd == "greedy") {
        rc = cmd_greedy(path);
    } else if (cmd == "info") {
        rc = cmd_info(path);
    } else {
        std::fprintf(stderr, "unknown subcommand: %s\n", cmd.c_str());
    }
    llama_backend_free();
    return rc;
}
