//! Test support: a tiny random llama written as a GGUF file, shared by the tests of the CPU
//! llama ([`super::llama_cpu`]) and the candle-tensor llama ([`super::llama_candle`]).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gguf_file::Value;

pub const VOCAB: usize = 96;

/// A tiny random llama written as a GGUF file: 2 layers, width 64, 4 query heads sharing
/// 2 KV heads, Q4_1 matrices and a Q8_0 embedding (tied output), 48 positions.
pub fn tiny_gguf(dir: &Path) -> std::path::PathBuf {
    tiny_model(dir, "llama")
}

/// [`tiny_gguf`] in the shape of another architecture: `qwen2` (q/k/v biases), `phi3` (fused
/// qkv and gate-up), `gemma3` (6 layers, 5 of them with a sliding window of 4 positions, a
/// head size of 32 that is not width / heads, one KV head, q/k norms, post norms).
pub fn tiny_model(dir: &Path, arch: &str) -> std::path::PathBuf {
    let gemma = arch == "gemma3";
    let (layers, hd, kv_heads) = if gemma {
        (6usize, 32usize, 1usize)
    } else {
        (2, 16, 2)
    };
    let (dim, ffn, kv) = (64usize, 128usize, hd * kv_heads);
    let q_dim = 4 * hd;
    let dev = Device::Cpu;
    let mut seed = 0u64;
    let mut rand = |rows: usize, cols: usize, scale: f32| {
        seed += 1;
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let h = (i as u64 + 1)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
                ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        Tensor::from_vec(data, (rows, cols), &dev).unwrap()
    };
    let q = |t: Tensor, ty| QTensor::quantize(&t, ty).unwrap();
    let norm = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &dev).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(rand(VOCAB, dim, 2.0), GgmlDType::Q8_0),
        ),
        ("output_norm.weight".into(), norm(dim)),
    ];
    let matrices: &[(&str, usize, usize)] = match arch {
        "phi3" => &[
            ("attn_qkv", q_dim + 2 * kv, dim),
            ("attn_output", dim, q_dim),
            ("ffn_up", 2 * ffn, dim),
            ("ffn_down", dim, ffn),
        ],
        _ => &[
            ("attn_q", q_dim, dim),
            ("attn_k", kv, dim),
            ("attn_v", kv, dim),
            ("attn_output", dim, q_dim),
            ("ffn_gate", ffn, dim),
            ("ffn_up", ffn, dim),
            ("ffn_down", dim, ffn),
        ],
    };
    for l in 0..layers {
        let p = format!("blk.{l}.");
        for &(name, rows, cols) in matrices {
            tensors.push((
                format!("{p}{name}.weight"),
                q(rand(rows, cols, 0.5), GgmlDType::Q4_1),
            ));
        }
        tensors.push((format!("{p}attn_norm.weight"), norm(dim)));
        tensors.push((format!("{p}ffn_norm.weight"), norm(dim)));
        if arch == "qwen2" {
            for (name, len) in [("attn_q", q_dim), ("attn_k", kv), ("attn_v", kv)] {
                let b = q(rand(1, len, 0.2).flatten_all().unwrap(), GgmlDType::F32);
                tensors.push((format!("{p}{name}.bias"), b));
            }
        }
        if gemma {
            tensors.push((format!("{p}attn_q_norm.weight"), norm(hd)));
            tensors.push((format!("{p}attn_k_norm.weight"), norm(hd)));
            tensors.push((format!("{p}post_attention_norm.weight"), norm(dim)));
            tensors.push((format!("{p}post_ffw_norm.weight"), norm(dim)));
        }
    }
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (key("block_count"), Value::U32(layers as u32)),
        (key("context_length"), Value::U32(48)),
        (key("embedding_length"), Value::U32(dim as u32)),
        (key("feed_forward_length"), Value::U32(ffn as u32)),
        (key("attention.head_count"), Value::U32(4)),
        (key("attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (
            key("rope.freq_base"),
            Value::F32(if gemma { 1e6 } else { 1e4 }),
        ),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
    ];
    if gemma {
        meta.push((key("attention.key_length"), Value::U32(hd as u32)));
        meta.push((key("attention.value_length"), Value::U32(hd as u32)));
        meta.push((key("attention.sliding_window"), Value::U32(4)));
    }
    let path = dir.join(format!("tiny-{arch}.gguf"));
    let mut f = std::fs::File::create(&path).unwrap();
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
    path
}
