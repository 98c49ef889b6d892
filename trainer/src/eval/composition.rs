//! Compositional accuracy in GenEval's manner: for each generated image, did it contain what
//! its prompt asked for? Prompts are long captions of known scenes, so every request has a
//! checkable answer; the scene evaluator reads each 2x2 cell of the generated image.
//!
//! Categories, per image:
//! - `object`: every requested shape is there (as many times as requested);
//! - `color`: every requested (colour, shape) pair is there (attribute binding);
//! - `count`: the number of objects is the requested one;
//! - `position`: every requested object is in its requested cell.
//!
//! Two more read the layout without the shapes, which a small denoiser draws as blobs long
//! before it draws them right (the four above sit at their floor then, whatever the arm):
//! - `layout`: the occupied cells are exactly the requested ones;
//! - `color_position`: every requested object's colour is in its requested cell.
//!
//! `overall` is the mean of the six category scores (GenEval averages its task scores);
//! `all_correct` the share of images right in every category.

use serde::{Deserialize, Serialize};

use crate::data::scene::Scene;

/// Per-category counts over a set of images; mergeable across ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CompositionCounts {
    pub images: u64,
    pub object: u64,
    pub color: u64,
    pub count: u64,
    pub position: u64,
    #[serde(default)]
    pub layout: u64,
    #[serde(default)]
    pub color_position: u64,
    pub all_correct: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    pub object: f64,
    pub color: f64,
    pub count: f64,
    pub position: f64,
    #[serde(default)]
    pub layout: f64,
    #[serde(default)]
    pub color_position: f64,
    pub overall: f64,
    pub all_correct: f64,
    pub images: u64,
}

fn covers(read: &[(usize, usize)], want: &[(usize, usize)], key: impl Fn(&(usize, usize)) -> (usize, usize)) -> bool {
    let mut pool: Vec<(usize, usize)> = read.iter().map(&key).collect();
    want.iter().all(|w| {
        let k = key(w);
        match pool.iter().position(|p| *p == k) {
            Some(i) => {
                pool.swap_remove(i);
                true
            }
            None => false,
        }
    })
}

impl CompositionCounts {
    /// Scores one image: `prompt` is the scene its prompt described, `read` what the
    /// evaluator saw per cell.
    /// Scores one image; returns its own score (the mean of the four categories), whose mean
    /// over images is `overall`.
    pub fn add(&mut self, prompt: &Scene, read: &[Option<(usize, usize)>; 4]) -> f32 {
        let want: Vec<(usize, usize)> = prompt.objects.iter().map(|o| (o.shape, o.color)).collect();
        let seen: Vec<(usize, usize)> = read.iter().flatten().copied().collect();
        let object = covers(&seen, &want, |p| (p.0, 0));
        let color = covers(&seen, &want, |p| *p);
        let count = seen.len() == want.len();
        let position = prompt.objects.iter().all(|o| read[o.cell].map(|r| r.0) == Some(o.shape));
        let layout = (0..4).all(|c| read[c].is_some() == prompt.objects.iter().any(|o| o.cell == c));
        let color_position = prompt.objects.iter().all(|o| read[o.cell].map(|r| r.1) == Some(o.color));
        let all = [object, color, count, position, layout, color_position];
        self.images += 1;
        self.object += object as u64;
        self.color += color as u64;
        self.count += count as u64;
        self.position += position as u64;
        self.layout += layout as u64;
        self.color_position += color_position as u64;
        self.all_correct += all.iter().all(|b| *b) as u64;
        all.iter().map(|b| *b as u8 as f32).sum::<f32>() / all.len() as f32
    }

    pub fn merge(&mut self, o: &CompositionCounts) {
        self.images += o.images;
        self.object += o.object;
        self.color += o.color;
        self.count += o.count;
        self.position += o.position;
        self.layout += o.layout;
        self.color_position += o.color_position;
        self.all_correct += o.all_correct;
    }

    pub fn finish(&self) -> Composition {
        let n = self.images.max(1) as f64;
        let (object, color, count, position) = (self.object as f64 / n, self.color as f64 / n, self.count as f64 / n, self.position as f64 / n);
        let (layout, color_position) = (self.layout as f64 / n, self.color_position as f64 / n);
        Composition {
            object,
            color,
            count,
            position,
            layout,
            color_position,
            overall: (object + color + count + position + layout + color_position) / 6.0,
            all_correct: self.all_correct as f64 / n,
            images: self.images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::scene::{Style, SHAPES};
    use crate::eval::scenes::cell_truth;

    #[test]
    fn scores_each_category() {
        let scene = (0..50).map(|i| Scene::generate(1, i, Style::Synthetic)).find(|s| s.objects.len() == 2).unwrap();
        let mut c = CompositionCounts::default();
        c.add(&scene, &cell_truth(&scene)); // perfect
        let mut wrong_colour = cell_truth(&scene);
        let o = &scene.objects[0];
        wrong_colour[o.cell] = Some((o.shape, (o.color + 1) % 10));
        c.add(&scene, &wrong_colour); // object, count, position, layout right; colours wrong
        let mut moved = [None; 4];
        for (k, cell) in cell_truth(&scene).iter().enumerate() {
            moved[(k + 1) % 4] = *cell;
        }
        c.add(&scene, &moved); // object, colour binding and count right; nothing in place
        c.add(&scene, &[None; 4]); // nothing
        let r = c.finish();
        assert_eq!((r.object, r.color, r.count, r.position), (0.75, 0.5, 0.75, 0.5));
        assert_eq!((r.layout, r.color_position), (0.5, 0.25));
        assert_eq!(r.all_correct, 0.25);
        assert_eq!(r.overall, (0.75 + 0.5 + 0.75 + 0.5 + 0.5 + 0.25) / 6.0);
    }

    #[test]
    fn blobs_in_the_right_cells_with_the_right_colours_score_the_layout() {
        // every shape misread (a blob), but in the requested cells and colours
        let scene = (0..50).map(|i| Scene::generate(1, i, Style::Synthetic)).find(|s| s.objects.len() == 2).unwrap();
        let blobs = cell_truth(&scene).map(|c| c.map(|(shape, color)| ((shape + 1) % SHAPES.len(), color)));
        let mut c = CompositionCounts::default();
        let score = c.add(&scene, &blobs);
        let r = c.finish();
        assert_eq!((r.object, r.color, r.position), (0.0, 0.0, 0.0));
        assert_eq!((r.count, r.layout, r.color_position), (1.0, 1.0, 1.0));
        assert_eq!(score, 0.5);
    }
}
