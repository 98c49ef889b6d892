//! The synthetic scene world: what a scene is, how one is drawn at random from (seed, index),
//! and the facts about it that captions and evaluation read.
//!
//! Scenes are 1-4 coloured shapes on a 2x2 grid of cells, so every prompt has a checkable
//! answer (object, colour, count, position), the way GenEval judges prompt adherence. The
//! renderer (`render.rs`) turns a scene into pixels; `captions.rs` into text.

use crate::rng::Rng;

pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "cross", "ring"];

/// The ten GenEval colours, with the RGB they are drawn in.
pub const COLORS: [(&str, [f32; 3]); 10] = [
    ("red", [0.86, 0.12, 0.12]),
    ("orange", [0.98, 0.55, 0.08]),
    ("yellow", [0.97, 0.90, 0.15]),
    ("green", [0.15, 0.70, 0.22]),
    ("blue", [0.12, 0.30, 0.90]),
    ("purple", [0.55, 0.18, 0.75]),
    ("pink", [0.98, 0.55, 0.75]),
    ("brown", [0.50, 0.30, 0.12]),
    ("black", [0.04, 0.04, 0.04]),
    ("white", [0.97, 0.97, 0.97]),
];

/// Backgrounds chosen to keep every object colour visible.
pub const BACKGROUNDS: [(&str, [f32; 3]); 4] = [
    ("grey", [0.55, 0.55, 0.55]),
    ("beige", [0.80, 0.74, 0.60]),
    ("teal", [0.25, 0.50, 0.52]),
    ("lavender", [0.70, 0.66, 0.82]),
];

pub const SIZES: [&str; 2] = ["small", "large"];
pub const CELLS: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];
pub const LIGHTS: [&str; 4] = ["from the left", "from the right", "from above", "from below"];
pub const TEXTURES: [&str; 3] = ["matte", "glossy", "speckled"];

/// How a scene is drawn: a clean flat "synthetic" look (the MidJourney role in PRX), a
/// textured, lit, noisy "photo" look (the real-photo role), or the curated set (the
/// Alchemist role: a small fixed set of clean, well-composed scenes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Synthetic,
    Photo,
    Curated,
}

impl Style {
    pub fn tag(self) -> u64 {
        match self {
            Style::Synthetic => 1,
            Style::Photo => 2,
            Style::Curated => 3,
        }
    }
}

/// Number of distinct scenes in the curated set.
pub const CURATED_SIZE: u64 = 512;

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub shape: usize,
    pub color: usize,
    /// 0 small, 1 large.
    pub size: usize,
    /// Cell index into `CELLS` (row-major 2x2).
    pub cell: usize,
    /// Offset of the centre inside its cell, in cell units, in [-0.15, 0.15].
    pub jitter: [f32; 2],
    pub texture: usize,
}

impl Object {
    pub fn name(&self) -> String {
        format!("{} {}", COLORS[self.color].0, SHAPES[self.shape])
    }
    pub fn row(&self) -> usize {
        self.cell / 2
    }
    pub fn col(&self) -> usize {
        self.cell % 2
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub style: Style,
    pub background: usize,
    pub light: usize,
    pub objects: Vec<Object>,
}

impl Scene {
    /// The scene number `index` of the stream `seed` in the given style. Deterministic.
    pub fn generate(seed: u64, index: u64, style: Style) -> Scene {
        let index = if style == Style::Curated { index % CURATED_SIZE } else { index };
        let mut rng = Rng::derive(seed, &[style.tag(), index]);
        let count = match style {
            // curated scenes are simpler and well separated: 1-2 large objects
            Style::Curated => 1 + rng.below(2),
            _ => 1 + rng.below(4),
        };
        let mut cells = [0usize, 1, 2, 3];
        rng.shuffle(&mut cells);
        let background = rng.below(BACKGROUNDS.len());
        let mut objects = Vec::with_capacity(count);
        for &cell in cells.iter().take(count) {
            let shape = rng.below(SHAPES.len());
            let color = rng.below(COLORS.len());
            let size = if style == Style::Curated { 1 } else { rng.below(2) };
            let jitter = [
                (rng.uniform() as f32 - 0.5) * 0.3,
                (rng.uniform() as f32 - 0.5) * 0.3,
            ];
            let texture = rng.below(TEXTURES.len());
            objects.push(Object { shape, color, size, cell, jitter, texture });
        }
        // Caption order and "main subject": largest first, then reading order.
        objects.sort_by_key(|o| (std::cmp::Reverse(o.size), o.cell));
        let light = rng.below(LIGHTS.len());
        Scene { style, background, light, objects }
    }

    /// Scene `index` of the stream the project's own small networks (teachers,
    /// autoencoders) train on: synthetic and photo styles alternate, so their features do
    /// not depend on the rendering style. Returns the scene and its noise seed.
    pub fn asset_stream(seed: u64, index: u64) -> (Scene, u64) {
        let style = if index % 2 == 0 { Style::Synthetic } else { Style::Photo };
        (Scene::generate(seed, index, style), seed ^ index)
    }

    /// Pairwise relations that hold, as (subject, relation, object) indices into `objects`.
    pub fn relations(&self) -> Vec<(usize, &'static str, usize)> {
        let mut out = Vec::new();
        for (i, a) in self.objects.iter().enumerate() {
            for (j, b) in self.objects.iter().enumerate().skip(i + 1) {
                if a.row() == b.row() {
                    let (l, r) = if a.col() < b.col() { (i, j) } else { (j, i) };
                    out.push((l, "to the left of", r));
                } else if a.col() == b.col() {
                    let (t, u) = if a.row() < b.row() { (i, j) } else { (j, i) };
                    out.push((t, "above", u));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_varied() {
        let a = Scene::generate(3, 10, Style::Synthetic);
        assert_eq!(a, Scene::generate(3, 10, Style::Synthetic));
        let distinct: std::collections::HashSet<String> = (0..50)
            .map(|i| format!("{:?}", Scene::generate(3, i, Style::Synthetic).objects))
            .collect();
        assert!(distinct.len() > 45);
        for i in 0..200 {
            let s = Scene::generate(1, i, Style::Photo);
            assert!((1..=4).contains(&s.objects.len()));
            let cells: std::collections::HashSet<usize> = s.objects.iter().map(|o| o.cell).collect();
            assert_eq!(cells.len(), s.objects.len(), "two objects share a cell");
        }
    }

    #[test]
    fn curated_set_is_small_and_repeats() {
        let a = Scene::generate(0, 5, Style::Curated);
        assert_eq!(a, Scene::generate(0, 5 + CURATED_SIZE, Style::Curated));
    }
}
