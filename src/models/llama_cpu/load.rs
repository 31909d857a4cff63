//! Loading a llama GGUF's weights for [`CpuLlama`]: metadata, matrices (q, k, v and gate, up
//! stacked), norms, slots and the compute pool.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::GgmlDType;

use super::{Config, CpuLlama, Layer, Scratch, Slot};
use crate::models::quant::{Kernel, QMatrix, QK};
use crate::models::ModelError;

fn load_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {e}", path.display()))
}

/// A tensor's raw bytes and its `(rows, cols)` (GGUF lists dimensions innermost first).
fn raw_tensor<R: Read + Seek>(
    content: &Content,
    file: &mut R,
    name: &str,
) -> Result<(GgmlDType, usize, usize, Vec<u8>), String> {
    let info = content
        .tensor_infos
        .get(name)
        .ok_or_else(|| format!("tensor {name} is missing"))?;
    let dims = info.shape.dims();
    let cols = *dims.last().ok_or_else(|| format!("{name} has no shape"))?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let bytes = match info.ggml_dtype {
        GgmlDType::F32 => rows * cols * 4,
        GgmlDType::Q4_1 => rows * cols / QK * 20,
        GgmlDType::Q8_0 => rows * cols / QK * 34,
        other => return Err(format!("{name}: type {other:?} is not supported here")),
    };
    let mut buf = vec![0u8; bytes];
    file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((info.ggml_dtype, rows, cols, buf))
}

fn read_matrix<R: Read + Seek>(
    path: &Path,
    content: &Content,
    file: &mut R,
    name: &str,
) -> Result<QMatrix, ModelError> {
    let (ty, rows, cols, bytes) = raw_tensor(content, file, name).map_err(|e| load_err(path, e))?;
    let id = match ty {
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 8,
        other => return Err(load_err(path, format!("{name}: {other:?} matrix"))),
    };
    QMatrix::from_bytes(id, rows, cols, &bytes).map_err(|e| load_err(path, e))
}

fn read_vector<R: Read + Seek>(
    path: &Path,
    content: &Content,
    file: &mut R,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, ModelError> {
    let (ty, rows, cols, bytes) = raw_tensor(content, file, name).map_err(|e| load_err(path, e))?;
    if ty != GgmlDType::F32 || rows * cols != len {
        return Err(load_err(path, format!("{name}: expected {len} f32 values")));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl CpuLlama {
    /// Whether this loader handles the GGUF (llama architecture with Q4_1 / Q8_0 matrices).
    pub fn supports(content: &Content) -> bool {
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned());
        arch.as_deref() == Some("llama")
            && content.tensor_infos.iter().all(|(_, t)| {
                matches!(
                    t.ggml_dtype,
                    GgmlDType::F32 | GgmlDType::Q4_1 | GgmlDType::Q8_0
                )
            })
    }

    /// Load the weights of a GGUF already opened as `content`. `slots` is how many sequences
    /// may run at once; `threads` the size of the compute pool.
    pub fn load<R: Read + Seek>(
        path: &Path,
        content: &Content,
        file: &mut R,
        slots: usize,
        threads: usize,
    ) -> Result<CpuLlama, ModelError> {
        let md = |k: &str| content.metadata.get(&format!("llama.{k}"));
        let num = |k: &str| -> Result<usize, ModelError> {
            md(k)
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .ok_or_else(|| load_err(path, format!("metadata llama.{k} is missing")))
        };
        let float = |k: &str, default: f32| md(k).and_then(|v| v.to_f32().ok()).unwrap_or(default);
        let dim = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = md("attention.head_count_kv")
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 {
            return Err(load_err(path, "inconsistent head counts"));
        }
        let cfg = Config {
            layers: num("block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim: dim / heads,
            ffn: num("feed_forward_length")?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: float("rope.freq_base", 10_000.0),
            context: md("context_length")
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .unwrap_or(2048),
        };
        if !cfg.head_dim.is_multiple_of(2) {
            return Err(load_err(path, "odd head size"));
        }
        let embed = read_matrix(path, content, file, "token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(read_matrix(path, content, file, "output.weight")?)
        } else {
            None
        };
        let out_norm = read_vector(path, content, file, "output_norm.weight", dim)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("blk.{l}.");
            let attn_norm = read_vector(path, content, file, &format!("{p}attn_norm.weight"), dim)?;
            let ffn_norm = read_vector(path, content, file, &format!("{p}ffn_norm.weight"), dim)?;
            let mut m = |n: &str| read_matrix(path, content, file, &format!("{p}{n}.weight"));
            let wqkv = QMatrix::concat(vec![m("attn_q")?, m("attn_k")?, m("attn_v")?])
                .map_err(|e| load_err(path, e))?;
            let wo = m("attn_output")?;
            let w13 = QMatrix::concat(vec![m("ffn_gate")?, m("ffn_up")?])
                .map_err(|e| load_err(path, e))?;
            let w2 = m("ffn_down")?;
            let kv_dim = cfg.kv_heads * cfg.head_dim;
            let shapes_ok = wqkv.rows == dim + 2 * kv_dim
                && wqkv.cols == dim
                && wo.rows == dim
                && wo.cols == dim
                && w13.rows == 2 * cfg.ffn
                && w13.cols == dim
                && w2.rows == dim
                && w2.cols == cfg.ffn;
            if !shapes_ok {
                return Err(load_err(path, format!("layer {l}: unexpected shapes")));
            }
            layers.push(Layer {
                attn_norm,
                wqkv,
                wo,
                ffn_norm,
                w13,
                w2,
            });
        }
        if embed.cols != dim || output.as_ref().is_some_and(|o| o.cols != dim) {
            return Err(load_err(path, "embedding width differs from the model's"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("anya-llama-{i}"))
            .build()
            .map_err(|e| load_err(path, e))?;
        let slots = (0..slots.max(1))
            .map(|_| Slot {
                k: vec![Vec::new(); cfg.layers],
                v: vec![Vec::new(); cfg.layers],
                len: 0,
            })
            .collect();
        Ok(CpuLlama {
            cfg,
            kernel: Kernel::detect(),
            embed,
            output,
            out_norm,
            layers,
            slots,
            pool,
            scratch: Scratch::default(),
        })
    }

    /// Open `path` and load it (see [`CpuLlama::load`]).
    pub fn open(path: &Path, slots: usize, threads: usize) -> Result<CpuLlama, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| load_err(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| load_err(path, e))?;
        Self::load(path, &content, &mut file, slots, threads)
    }
}
