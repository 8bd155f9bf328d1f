//! ImageNet-style image folders: `root/<class>/*.jpg|*.jpeg|*.png`, classes in sorted folder
//! order; each image resized so its shorter side is 256 (bilinear), centre-cropped to 224,
//! normalised with the ImageNet mean and standard deviation. For MobileNet 224.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::imageops::FilterType;

use crate::DataError;

/// ImageNet channel means (RGB, 0..1).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A listed image folder.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// Class names (sub-folder names), in label order.
    pub classes: Vec<String>,
    /// Image files and their labels.
    pub samples: Vec<(PathBuf, usize)>,
    /// Side of the square crop (224).
    pub crop: usize,
    /// Shorter side after resizing (256).
    pub resize: usize,
}

impl ImageFolder {
    /// List `root`.
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|e| DataError::io(root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for dir in dirs {
            let label = classes.len();
            classes.push(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| DataError::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let ext = p
                        .extension()
                        .map(|e| e.to_string_lossy().to_lowercase())
                        .unwrap_or_default();
                    matches!(ext.as_str(), "jpg" | "jpeg" | "png")
                })
                .collect();
            files.sort();
            samples.extend(files.into_iter().map(|f| (f, label)));
        }
        if samples.is_empty() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
                reason:
                    "no .jpg/.jpeg/.png images in class sub-folders (expected root/<class>/<image>)"
                        .into(),
            });
        }
        Ok(Self {
            classes,
            samples,
            crop: 224,
            resize: 256,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Image `index` as normalised `[3, crop, crop]` values (channel-planar).
    pub fn load(&self, index: usize) -> Result<Vec<f32>, DataError> {
        let path = &self.samples[index].0;
        let img = image::open(path)
            .map_err(|e| DataError::format(path, format!("cannot decode image ({e})")))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        let scale = self.resize as f64 / w.min(h).max(1) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(self.crop as u32),
            ((h as f64 * scale).round() as u32).max(self.crop as u32),
        );
        let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
        let (x0, y0) = ((nw - self.crop as u32) / 2, (nh - self.crop as u32) / 2);
        let mut out = vec![0f32; 3 * self.crop * self.crop];
        for y in 0..self.crop {
            for x in 0..self.crop {
                let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
                for c in 0..3 {
                    out[c * self.crop * self.crop + y * self.crop + x] =
                        (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                }
            }
        }
        Ok(out)
    }

    /// Images `[batch, 3, crop, crop]` and labels of `indices`, decoded in parallel.
    pub fn batch(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<1, Int>), DataError> {
        let pixels: Vec<Vec<f32>> = crate::speech::parallel_map(indices, |&i| self.load(i))
            .into_iter()
            .collect::<Result<_, _>>()?;
        let labels: Vec<i64> = indices.iter().map(|&i| self.samples[i].1 as i64).collect();
        let n = indices.len();
        Ok((
            Tensor::from_data(
                TensorData::new(pixels.concat(), [n, 3, self.crop, self.crop]),
                device,
            ),
            Tensor::from_data(TensorData::new(labels, [n]), device),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_resizes_crops_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        for (class, colour) in [("cat", [255u8, 0, 0]), ("dog", [0, 0, 255])] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            let img = image::RgbImage::from_pixel(320, 240, image::Rgb(colour));
            img.save(dir.path().join(class).join("a.png")).unwrap();
        }
        std::fs::write(dir.path().join("dog/readme.txt"), "not an image").unwrap();
        let folder = ImageFolder::open(dir.path()).unwrap();
        assert_eq!(folder.classes, vec!["cat", "dog"]);
        assert_eq!(folder.len(), 2);
        let red = folder.load(0).unwrap();
        assert_eq!(red.len(), 3 * 224 * 224);
        assert!((red[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((red[224 * 224] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
        let (x, y) = folder.batch(&[0, 1], &Device::flex()).unwrap();
        assert_eq!(x.dims(), [2, 3, 224, 224]);
        assert_eq!(crate::host_labels(y), vec![0, 1]);
        std::fs::write(dir.path().join("dog/b.jpg"), b"\xff\xd8broken").unwrap();
        let folder = ImageFolder::open(dir.path()).unwrap();
        let err = folder.load(2).unwrap_err().to_string();
        assert!(err.contains("b.jpg") && err.contains("decode"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            ImageFolder::open(empty.path()),
            Err(DataError::Empty { .. })
        ));
    }
}
