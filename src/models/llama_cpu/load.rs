//! Loading a GGUF's weights for [`CpuLlama`]: the architecture's metadata, matrices (q, k, v and
//! gate, up side by side), norms, biases, slots and the compute pool.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::GgmlDType;

use super::{Act, Arch, Config, CpuLlama, Layer, Proj, Rope, Scratch, Slot};
use crate::models::quant::{GgmlType, Kernel, QMatrix};
use crate::models::ModelError;

fn load_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {e}", path.display()))
}

/// Our name for a tensor type candle's reader knows.
pub fn ggml_type(t: GgmlDType) -> Option<GgmlType> {
    Some(match t {
        GgmlDType::F32 => GgmlType::F32,
        GgmlDType::F16 => GgmlType::F16,
        GgmlDType::BF16 => GgmlType::BF16,
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q4_1 => GgmlType::Q4_1,
        GgmlDType::Q5_0 => GgmlType::Q5_0,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q4K => GgmlType::Q4_K,
        GgmlDType::Q5K => GgmlType::Q5_K,
        GgmlDType::Q6K => GgmlType::Q6_K,
        _ => return None,
    })
}

/// The names of the tensor types we run, for error messages.
pub fn supported_types() -> String {
    GgmlType::ALL
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tensor's type, raw bytes and `(rows, cols)` (GGUF lists dimensions innermost first).
fn raw_tensor<R: Read + Seek>(
    content: &Content,
    file: &mut R,
    name: &str,
) -> Result<(GgmlType, usize, usize, Vec<u8>), String> {
    let info = content
        .tensor_infos
        .get(name)
        .ok_or_else(|| format!("tensor {name} is missing"))?;
    let dims = info.shape.dims();
    let cols = *dims.last().ok_or_else(|| format!("{name} has no shape"))?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let ty = ggml_type(info.ggml_dtype).ok_or_else(|| {
        format!(
            "{name}: type {:?} is not supported (supported: {})",
            info.ggml_dtype,
            supported_types()
        )
    })?;
    if !cols.is_multiple_of(ty.block_elems()) {
        return Err(format!(
            "{name}: {cols} columns is not a multiple of {}'s block",
            ty.name()
        ));
    }
    let bytes = rows * cols / ty.block_elems() * ty.block_bytes();
    let mut buf = vec![0u8; bytes];
    file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("{name}: {e} (is the file truncated?)"))?;
    Ok((ty, rows, cols, buf))
}

/// Reads tensors of one open GGUF.
struct Reader<'a, R> {
    path: &'a Path,
    content: &'a Content,
    file: &'a mut R,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A matrix of `rows × cols` (either checked when given).
    fn matrix(
        &mut self,
        name: &str,
        rows: Option<usize>,
        cols: usize,
    ) -> Result<QMatrix, ModelError> {
        let (ty, r, c, bytes) =
            raw_tensor(self.content, self.file, name).map_err(|e| load_err(self.path, e))?;
        if c != cols || rows.is_some_and(|want| want != r) {
            return Err(load_err(
                self.path,
                format!(
                    "{name}: shape {r}×{c}, expected {}×{cols}",
                    rows.map_or("?".into(), |v| v.to_string())
                ),
            ));
        }
        QMatrix::from_type(ty, r, c, &bytes)
            .map_err(|e| load_err(self.path, format!("{name}: {e}")))
    }

    /// A vector of `len` values (stored as F32, F16 or BF16).
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (ty, rows, cols, bytes) =
            raw_tensor(self.content, self.file, name).map_err(|e| load_err(self.path, e))?;
        if rows * cols != len {
            return Err(load_err(
                self.path,
                format!("{name}: {} values, expected {len}", rows * cols),
            ));
        }
        let v = match ty {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(load_err(
                    self.path,
                    format!("{name}: a {} vector", other.name()),
                ))
            }
        };
        Ok(v)
    }

    fn optional_vector(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The architecture a GGUF names, if we run it.
pub fn arch_of(content: &Content) -> Result<(String, Arch), String> {
    let name = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    match Arch::from_name(&name) {
        Some(a) => Ok((name, a)),
        None => Err(format!(
            "architecture `{name}` is not supported (supported: {})",
            Arch::NAMES.join(", ")
        )),
    }
}

/// The model's shape and numerics from the `{arch}.*` metadata.
fn config(path: &Path, content: &Content) -> Result<Config, ModelError> {
    let (name, arch) = arch_of(content).map_err(|e| load_err(path, e))?;
    let md = |k: &str| content.metadata.get(&format!("{name}.{k}"));
    let int = |k: &str| md(k).and_then(|v| v.to_u32().ok()).map(|v| v as usize);
    let num = |k: &str| -> Result<usize, ModelError> {
        int(k).ok_or_else(|| load_err(path, format!("metadata {name}.{k} is missing")))
    };
    let float = |k: &str| md(k).and_then(|v| v.to_f32().ok());
    let dim = num("embedding_length")?;
    let heads = num("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(load_err(path, "inconsistent head counts"));
    }
    let head_dim = int("attention.key_length").unwrap_or(dim / heads);
    if int("attention.value_length").is_some_and(|v| v != head_dim) {
        return Err(load_err(path, "key and value head sizes differ"));
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > super::ops::MAX_HEAD {
        return Err(load_err(
            path,
            format!("head size {head_dim} is not supported"),
        ));
    }
    let base = float("rope.freq_base").unwrap_or(10_000.0);
    let linear = md("rope.scaling.type")
        .and_then(|v| v.to_string().ok())
        .is_some_and(|t| t == "linear");
    let scale = match float("rope.scaling.factor") {
        Some(f) if linear && f > 0.0 => 1.0 / f,
        _ => 1.0,
    };
    let gemma = arch == Arch::Gemma3;
    let window = if gemma {
        int("attention.sliding_window").filter(|&w| w > 0)
    } else {
        None // llama.cpp runs llama, qwen and phi3 files without a window
    };
    Ok(Config {
        arch,
        layers: num("block_count")?,
        dim,
        heads,
        kv_heads,
        head_dim,
        ffn: num("feed_forward_length")?,
        eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope: Rope {
            neox: arch != Arch::Llama,
            base,
            base_swa: float("rope.freq_base_swa").unwrap_or(10_000.0),
            scale,
            factors: None,
        },
        context: int("context_length").unwrap_or(2048),
        embed_scale: gemma.then(|| (dim as f32).sqrt()),
        q_scale: match arch {
            Arch::Gemma3 | Arch::Phi3 => Some(1.0 / (head_dim as f32).sqrt()),
            _ => None,
        },
        kq_scale: match arch {
            Arch::Gemma3 | Arch::Phi3 => 1.0,
            _ => 1.0 / (head_dim as f32).sqrt(),
        },
        window,
        act: if gemma { Act::Gelu } else { Act::Silu },
        softcap: float("final_logit_softcapping").filter(|&c| c > 0.0),
    })
}

/// Whether layer `l` of a gemma3 model with a window is a sliding-window one: five in every
/// six, unless the file gives the pattern.
fn is_swa(content: &Content, cfg: &Config, l: usize) -> bool {
    if cfg.window.is_none() {
        return false;
    }
    let pattern = content
        .metadata
        .get("gemma3.attention.sliding_window_pattern")
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .unwrap_or(6);
    pattern == 0 || l % pattern < pattern - 1
}

fn layer<R: Read + Seek>(
    rd: &mut Reader<'_, R>,
    cfg: &Config,
    l: usize,
) -> Result<Layer, ModelError> {
    let p = format!("blk.{l}.");
    let (dim, hd) = (cfg.dim, cfg.head_dim);
    let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
    let attn_norm = rd.vector(&format!("{p}attn_norm.weight"), dim)?;
    let qkv = if rd.has(&format!("{p}attn_qkv.weight")) {
        vec![rd.matrix(
            &format!("{p}attn_qkv.weight"),
            Some(q_dim + 2 * kv_dim),
            dim,
        )?]
    } else {
        vec![
            rd.matrix(&format!("{p}attn_q.weight"), Some(q_dim), dim)?,
            rd.matrix(&format!("{p}attn_k.weight"), Some(kv_dim), dim)?,
            rd.matrix(&format!("{p}attn_v.weight"), Some(kv_dim), dim)?,
        ]
    };
    let bias =
        |rd: &mut Reader<'_, R>, n: &str, len| rd.optional_vector(&format!("{p}{n}.bias"), len);
    let qkv_bias = match (
        bias(rd, "attn_q", q_dim)?,
        bias(rd, "attn_k", kv_dim)?,
        bias(rd, "attn_v", kv_dim)?,
    ) {
        (Some(q), Some(k), Some(v)) => Some([q, k, v].concat()),
        (None, None, None) => None,
        _ => {
            return Err(ModelError::Load(format!(
                "{p}: only some of q/k/v have biases"
            )))
        }
    };
    let gate_up = if rd.has(&format!("{p}ffn_gate.weight")) {
        vec![
            rd.matrix(&format!("{p}ffn_gate.weight"), Some(cfg.ffn), dim)?,
            rd.matrix(&format!("{p}ffn_up.weight"), Some(cfg.ffn), dim)?,
        ]
    } else {
        // phi3: gate and up in one tensor, gate first
        vec![rd.matrix(&format!("{p}ffn_up.weight"), Some(2 * cfg.ffn), dim)?]
    };
    let shape = |e: crate::models::quant::QuantError| ModelError::Load(format!("{p}: {e}"));
    Ok(Layer {
        attn_norm,
        qkv: Proj::new(qkv).map_err(shape)?,
        qkv_bias,
        q_norm: rd.optional_vector(&format!("{p}attn_q_norm.weight"), hd)?,
        k_norm: rd.optional_vector(&format!("{p}attn_k_norm.weight"), hd)?,
        wo: rd.matrix(&format!("{p}attn_output.weight"), Some(dim), q_dim)?,
        post_attn_norm: rd.optional_vector(&format!("{p}post_attention_norm.weight"), dim)?,
        ffn_norm: rd.vector(&format!("{p}ffn_norm.weight"), dim)?,
        gate_up: Proj::new(gate_up).map_err(shape)?,
        down: rd.matrix(&format!("{p}ffn_down.weight"), Some(dim), cfg.ffn)?,
        post_ffn_norm: rd.optional_vector(&format!("{p}post_ffw_norm.weight"), dim)?,
        swa: false,
    })
}

impl CpuLlama {
    /// Whether this loader runs the GGUF: an architecture of [`Arch`] whose tensors all have
    /// types our kernels cover.
    pub fn supports(content: &Content) -> bool {
        arch_of(content).is_ok()
            && content
                .tensor_infos
                .values()
                .all(|t| ggml_type(t.ggml_dtype).is_some())
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
        let mut cfg = config(path, content)?;
        let dim = cfg.dim;
        let mut rd = Reader {
            path,
            content,
            file,
        };
        let embed = rd.matrix("token_embd.weight", None, dim)?;
        let output = if rd.has("output.weight") {
            Some(rd.matrix("output.weight", Some(embed.rows), dim)?)
        } else {
            None
        };
        let out_norm = rd.vector("output_norm.weight", dim)?;
        let pairs = cfg.head_dim / 2;
        cfg.rope.factors = match ["rope_freqs.weight", "rope_factors_short.weight"]
            .into_iter()
            .find(|n| rd.has(n))
        {
            Some(n) => Some(rd.vector(n, pairs)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let mut layer = layer(&mut rd, &cfg, l).map_err(|e| load_err(path, e))?;
            layer.swa = is_swa(content, &cfg, l);
            if layer.qkv.cols() != dim || layer.gate_up.cols() != dim {
                return Err(load_err(path, format!("layer {l}: unexpected shapes")));
            }
            layers.push(layer);
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
