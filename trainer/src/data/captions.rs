//! Captions for synthetic scenes, and the word-level tokenizer the learned text encoder reads.
//!
//! Long captions describe every object (size, texture, colour, shape, cell), the
//! background, the lighting and the pairwise relations, as multi-clause prose (the PRX
//! baseline's long captions). Short captions are one line naming only the main subject (the
//! PRX "short captions" arm). `Mixed` picks one of the two per sample.

use super::scene::{Scene, Style, BACKGROUNDS, CELLS, COLORS, LIGHTS, SHAPES, SIZES, TEXTURES};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionMode {
    Long,
    Short,
    Mixed,
}

const COUNTS: [&str; 4] = ["one", "two", "three", "four"];

fn style_words(style: Style) -> &'static str {
    match style {
        Style::Photo => "photograph",
        Style::Synthetic | Style::Curated => "clean digital render",
    }
}

pub fn long_caption(scene: &Scene) -> String {
    let n = scene.objects.len();
    let mut s = format!(
        "a {} of {} {} on a {} background, lit {}.",
        style_words(scene.style),
        COUNTS[n - 1],
        if n == 1 { "shape" } else { "shapes" },
        BACKGROUNDS[scene.background].0,
        LIGHTS[scene.light]
    );
    for o in &scene.objects {
        s.push_str(&format!(
            " a {} {} {} {} in the {}.",
            SIZES[o.size], TEXTURES[o.texture], COLORS[o.color].0, SHAPES[o.shape], CELLS[o.cell]
        ));
    }
    for (a, rel, b) in scene.relations() {
        s.push_str(&format!(" the {} is {} the {}.", scene.objects[a].name(), rel, scene.objects[b].name()));
    }
    s
}

pub fn short_caption(scene: &Scene) -> String {
    let o = &scene.objects[0];
    format!("a {} on a {} background.", o.name(), BACKGROUNDS[scene.background].0)
}

pub fn caption(scene: &Scene, mode: CaptionMode, rng: &mut Rng) -> String {
    match mode {
        CaptionMode::Long => long_caption(scene),
        CaptionMode::Short => short_caption(scene),
        CaptionMode::Mixed => {
            if rng.chance(0.5) {
                long_caption(scene)
            } else {
                short_caption(scene)
            }
        }
    }
}

/// Caption of a real sample in the requested mode: `short` keeps the first sentence.
pub fn real_caption(text: &str, mode: CaptionMode, rng: &mut Rng) -> String {
    let short = || text.split_inclusive('.').next().unwrap_or(text).trim().to_string();
    match mode {
        CaptionMode::Long => text.to_string(),
        CaptionMode::Short => short(),
        CaptionMode::Mixed => {
            if rng.chance(0.5) {
                text.to_string()
            } else {
                short()
            }
        }
    }
}

/// Word-level tokenizer: every word the caption templates use has its own id; any other word
/// (real-data captions) is hashed into a fixed number of buckets, so nothing is ever dropped
/// silently and the vocabulary size is a constant the model can be built with.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    words: std::collections::HashMap<String, u32>,
    known: u32,
}

pub const PAD: u32 = 0;
const HASH_BUCKETS: u32 = 512;

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer {
    pub fn new() -> Self {
        let mut list: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            for w in s.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
                if !list.iter().any(|x| x == w) {
                    list.push(w.to_string());
                }
            }
        };
        for w in SHAPES.iter().chain(&SIZES).chain(&CELLS).chain(&LIGHTS).chain(&TEXTURES).chain(&COUNTS) {
            add(w);
        }
        for (w, _) in COLORS.iter().chain(&BACKGROUNDS) {
            add(w);
        }
        add("a the of on in is to left above background lit shape shapes photograph clean digital render");
        let words = list.into_iter().enumerate().map(|(i, w)| (w, i as u32 + 1)).collect::<std::collections::HashMap<_, _>>();
        let known = words.len() as u32 + 1;
        Self { words, known }
    }

    pub fn vocab_size(&self) -> usize {
        (self.known + HASH_BUCKETS) as usize
    }

    fn id(&self, w: &str) -> u32 {
        if let Some(&id) = self.words.get(w) {
            return id;
        }
        // FNV-1a: stable across platforms and runs
        let mut h: u32 = 0x811c_9dc5;
        for b in w.bytes() {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        self.known + h % HASH_BUCKETS
    }

    /// Token ids padded with `PAD` (or truncated) to `max_len`, and the number of real tokens.
    pub fn encode(&self, text: &str, max_len: usize) -> (Vec<u32>, usize) {
        let lower = text.to_lowercase();
        let mut ids: Vec<u32> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| self.id(w))
            .take(max_len)
            .collect();
        let n = ids.len();
        ids.resize(max_len, PAD);
        (ids, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_caption_names_every_object_and_short_only_the_first() {
        for i in 0..100 {
            let s = Scene::generate(2, i, Style::Synthetic);
            let long = long_caption(&s);
            for o in &s.objects {
                assert!(long.contains(&format!("{} in the {}", o.name(), CELLS[o.cell])), "{long}");
            }
            let short = short_caption(&s);
            assert!(short.contains(&s.objects[0].name()));
            assert!(short.split(' ').count() < 10);
        }
    }

    #[test]
    fn tokenizer_knows_every_template_word_and_hashes_the_rest() {
        let t = Tokenizer::new();
        for i in 0..50 {
            let c = long_caption(&Scene::generate(0, i, Style::Photo));
            let (ids, n) = t.encode(&c, 200);
            assert!(ids[..n].iter().all(|&id| id > 0 && id < t.known), "{c}");
        }
        let (ids, n) = t.encode("A zebra, purple!", 6);
        assert_eq!(n, 3);
        assert!(ids[1] >= t.known);
        assert_eq!(&ids[3..], &[PAD, PAD, PAD]);
        assert_eq!(t.encode("zebra", 1).0, t.encode("ZEBRA", 1).0);
    }
}
