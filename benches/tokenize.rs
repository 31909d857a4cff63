//! Tokenisation as the predict handler does it before queueing (`models::TextCodec`), with
//! all-minilm-l6-v2's tokenizer.json. Skipped, with a message, when the model repository has no
//! copy (`scripts/fetch-models.sh` fetches it; `ANYA_MODELS_DIR` names another repository).
//!
//! cargo bench --bench tokenize

use std::hint::black_box;
use std::path::PathBuf;

use anya::models::TextCodec;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn models_dir() -> PathBuf {
    std::env::var_os("ANYA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

const SHORT: &str = "The quick brown fox jumps over the lazy dog.";
const LONG: &str =
    "In the early morning light, the old fisherman pushed his small wooden boat into \
    the calm water of the bay, checked his nets twice, and rowed slowly past the harbor wall \
    while gulls circled overhead, hoping that today, after a long week of poor catches and bad \
    weather, the sea would finally be generous enough to fill his baskets before noon.";

fn bench(c: &mut Criterion) {
    let path = models_dir().join("all-minilm-l6-v2/1.0.0/tokenizer.json");
    if !path.exists() {
        eprintln!(
            "tokenize: skipped, {} is absent (run scripts/fetch-models.sh)",
            path.display()
        );
        return;
    }
    let codec = TextCodec::from_file(&path, true, 256).expect("tokenizer loads");
    let mut g = c.benchmark_group("tokenize/all-minilm-l6-v2");
    for (name, text) in [("short_10_words", SHORT), ("long_60_words", LONG)] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(codec.encode(black_box(text), false).expect("encodes")))
        });
    }
    g.bench_function("truncating_long_to_16", |b| {
        let short = TextCodec::from_file(&path, true, 16).expect("tokenizer loads");
        b.iter(|| black_box(short.encode(black_box(LONG), true).expect("encodes")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
