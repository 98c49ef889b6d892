//! A frozen pretrained text encoder, loaded from a directory holding `config.json`,
//! `model.safetensors` and `tokenizer.json` with candle-transformers and the `tokenizers`
//! crate: a BERT-family model (`text.encoder = "bert"`, e.g. all-MiniLM-L6-v2 from `ablate
//! assets fetch minilm`) or a T5 encoder (`"t5"`, e.g. T5-v1.1 or the T5 encoders image
//! models condition on; the features are the encoder's last hidden states).
//!
//! The encoder is frozen, so the embedding of a caption never changes: embeddings are
//! cached per caption and each distinct caption is encoded once.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use candle_transformers::models::t5::{Config as T5Config, T5EncoderModel};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Most captions kept in the cache (beyond it, embeddings are computed every time).
const CACHE_LIMIT: usize = 200_000;

/// Which pretrained family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    T5,
}

impl Family {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "bert" => Some(Self::Bert),
            "t5" => Some(Self::T5),
            _ => None,
        }
    }
}

enum Model {
    Bert(BertModel),
    /// T5's forward takes `&mut self` (its position-bias cache): one caption at a time.
    T5(Mutex<T5EncoderModel>),
}

pub struct FrozenTextEncoder {
    model: Model,
    tokenizer: tokenizers::Tokenizer,
    pub hidden: usize,
    max_len: usize,
    device: Device,
    cache: Mutex<HashMap<String, (Tensor, usize)>>,
}

fn missing(dir: &Path, what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "text encoder directory {} lacks {what}: for BERT run `ablate assets fetch minilm`, for T5 copy a T5 encoder's Hugging Face files there (or point text.dir at a directory with config.json, model.safetensors and tokenizer.json)",
        dir.display()
    ))
}

fn config<C: serde::de::DeserializeOwned>(dir: &Path) -> Result<C> {
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|_| missing(dir, "config.json"))?;
    serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.join("config.json").display())))
}

/// Hidden width of the encoder in `dir` (read from its config.json).
pub fn hidden_size(family: Family, dir: &Path) -> Result<usize> {
    Ok(match family {
        Family::Bert => config::<Config>(dir)?.hidden_size,
        Family::T5 => config::<T5Config>(dir)?.d_model,
    })
}

impl FrozenTextEncoder {
    pub fn load(family: Family, dir: &Path, max_len: usize, device: &Device) -> Result<Self> {
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
        let (model, hidden) = match family {
            Family::Bert => {
                let cfg: Config = config(dir)?;
                (Model::Bert(BertModel::load(vb, &cfg)?), cfg.hidden_size)
            }
            Family::T5 => {
                let cfg: T5Config = config(dir)?;
                (Model::T5(Mutex::new(T5EncoderModel::load(vb, &cfg)?)), cfg.d_model)
            }
        };
        Ok(Self { model, tokenizer, hidden, max_len, device: device.clone(), cache: Mutex::new(HashMap::new()) })
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
        let out = match &self.model {
            Model::Bert(m) => m.forward(&t, &t.zeros_like()?, None)?,
            Model::T5(m) => m.lock().unwrap().forward(&t)?,
        };
        let out = out.squeeze(0)?.to_dtype(DType::F32)?.detach();
        let pad = Tensor::zeros((self.max_len - n, self.hidden), DType::F32, &self.device)?;
        Ok((Tensor::cat(&[&out, &pad], 0)?, n))
    }

    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap().len()
    }
}
