//! A frozen pretrained BERT-family text encoder (e.g. all-MiniLM-L6-v2, obtained with
//! `ablate assets fetch minilm`), loaded from a directory holding `config.json`,
//! `model.safetensors` and `tokenizer.json` with candle-transformers' BERT and the
//! `tokenizers` crate.
//!
//! The encoder is frozen, so the embedding of a caption never changes: embeddings are
//! cached per caption and each distinct caption is encoded once.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Most captions kept in the cache (beyond it, embeddings are computed every time).
const CACHE_LIMIT: usize = 200_000;

pub struct BertEncoder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    pub hidden: usize,
    max_len: usize,
    device: Device,
    cache: Mutex<HashMap<String, (Tensor, usize)>>,
}

fn missing(dir: &Path, what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "text encoder directory {} lacks {what}: run `ablate assets fetch minilm` (or point text.bert_dir at a directory with config.json, model.safetensors and tokenizer.json)",
        dir.display()
    ))
}

/// Hidden width of the encoder in `dir` (read from its config.json).
pub fn hidden_size(dir: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|_| missing(dir, "config.json"))?;
    let cfg: Config = serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.join("config.json").display())))?;
    Ok(cfg.hidden_size)
}

impl BertEncoder {
    pub fn load(dir: &Path, max_len: usize, device: &Device) -> Result<Self> {
        let text = std::fs::read_to_string(dir.join("config.json")).map_err(|_| missing(dir, "config.json"))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.join("config.json").display())))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(missing(dir, "model.safetensors"));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            if dir.join("tokenizer.json").exists() {
                candle_core::Error::Msg(format!("{}: {e}", dir.join("tokenizer.json").display()))
            } else {
                missing(dir, "tokenizer.json")
            }
        })?;
        // SAFETY: read-only memory map of a file not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        let model = BertModel::load(vb, &cfg)?;
        Ok(Self { model, tokenizer, hidden: cfg.hidden_size, max_len, device: device.clone(), cache: Mutex::new(HashMap::new()) })
    }

    /// Token ids of `text`, truncated to `max_len`; empty text = no tokens (null prompt).
    fn ids(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(vec![]);
        }
        let enc = self.tokenizer.encode(text, true).map_err(|e| candle_core::Error::Msg(format!("tokenizing caption: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        ids.truncate(self.max_len);
        Ok(ids)
    }

    /// Embeddings (B, max_len, hidden) and real lengths; padded rows are zero.
    pub fn encode(&self, captions: &[String]) -> Result<(Tensor, Vec<usize>)> {
        let mut rows = Vec::with_capacity(captions.len());
        let mut lens = Vec::with_capacity(captions.len());
        for c in captions {
            let cached = self.cache.lock().unwrap().get(c).cloned();
            let (row, n) = match cached {
                Some(hit) => hit,
                None => {
                    let computed = self.embed_one(c)?;
                    let mut cache = self.cache.lock().unwrap();
                    if cache.len() < CACHE_LIMIT {
                        cache.insert(c.clone(), computed.clone());
                    }
                    computed
                }
            };
            rows.push(row);
            lens.push(n);
        }
        Ok((Tensor::stack(&rows, 0)?, lens))
    }

    fn embed_one(&self, caption: &str) -> Result<(Tensor, usize)> {
        let ids = self.ids(caption)?;
        let n = ids.len();
        if n == 0 {
            return Ok((Tensor::zeros((self.max_len, self.hidden), DType::F32, &self.device)?, 0));
        }
        let t = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let types = t.zeros_like()?;
        let out = self.model.forward(&t, &types, None)?.squeeze(0)?.detach();
        let pad = Tensor::zeros((self.max_len - n, self.hidden), DType::F32, &self.device)?;
        Ok((Tensor::cat(&[&out, &pad], 0)?, n))
    }

    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap().len()
    }
}
