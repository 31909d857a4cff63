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
    let (dim, ffn, kv) = (64usize, 128usize, 32usize);
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
    for l in 0..2 {
        let p = format!("blk.{l}.");
        for (name, rows, cols) in [
            ("attn_q", dim, dim),
            ("attn_k", kv, dim),
            ("attn_v", kv, dim),
            ("attn_output", dim, dim),
            ("ffn_gate", ffn, dim),
            ("ffn_up", ffn, dim),
            ("ffn_down", dim, ffn),
        ] {
            tensors.push((
                format!("{p}{name}.weight"),
                q(rand(rows, cols, 0.5), GgmlDType::Q4_1),
            ));
        }
        tensors.push((format!("{p}attn_norm.weight"), norm(dim)));
        tensors.push((format!("{p}ffn_norm.weight"), norm(dim)));
    }
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(2)),
        ("llama.context_length", Value::U32(48)),
        ("llama.embedding_length", Value::U32(dim as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    let path = dir.join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
    path
}
