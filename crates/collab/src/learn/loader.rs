//! [`IndexLoader`]: burn's `DataLoader` over the project's [`Batches`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::Device;
use collab_data::SeededRng;

use crate::data::{Batch, Batches, epoch_rng};

/// A burn `DataLoader` over [`Batches`]: batches of `batch_size` indices, shuffled per epoch
/// from the seed (training) or in order (validation), augmented per epoch from the seed when
/// asked. `iter()` is one epoch; the epoch counter starts where a resumed run starts.
///
/// Split across devices ([`Self::split`]), it deals out global batches: the epoch's batches of
/// `devices × batch_size` items, shuffled exactly as one device's batches of that size, and
/// burn-train's `split_dataloader` gives device `i` the `i`-th `batch_size` items of each. So a
/// step on `N` devices sees the same items as the step of one device with an `N` times larger
/// batch.
#[derive(Clone)]
pub struct IndexLoader {
    data: Arc<dyn Batches>,
    range: (usize, usize),
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    augment: bool,
    epoch: Arc<AtomicUsize>,
    device: Device,
    /// Devices the global batches are dealt to (1: not split).
    parts: usize,
    /// The share of each global batch this loader yields (after `slice`).
    part: Option<usize>,
}

impl IndexLoader {
    /// Training batches: shuffled (and augmented with `augment`) per epoch from `seed`,
    /// starting at epoch `first_epoch` (0-based).
    pub fn train(
        data: Arc<dyn Batches>,
        batch_size: usize,
        seed: u64,
        augment: bool,
        first_epoch: usize,
    ) -> Self {
        let len = data.len();
        Self {
            data,
            range: (0, len),
            batch_size: batch_size.max(1),
            seed,
            shuffle: true,
            augment,
            epoch: Arc::new(AtomicUsize::new(first_epoch)),
            device: crate::device::compute(),
            parts: 1,
            part: None,
        }
    }

    /// Deal global batches of `devices × batch_size` items to `devices` devices (see the
    /// type's documentation).
    pub fn split(self, devices: usize) -> Self {
        Self {
            parts: devices.max(1),
            ..self
        }
    }

    fn global_batch(&self) -> usize {
        self.batch_size * self.parts
    }

    /// Items of one epoch this loader yields.
    fn items(&self) -> usize {
        let n = self.range.1 - self.range.0;
        match self.part {
            None => n,
            Some(part) => {
                let global = self.global_batch();
                let rest = (n % global).saturating_sub(part * self.batch_size);
                (n / global) * self.batch_size + rest.min(self.batch_size)
            }
        }
    }

    /// Evaluation batches, in order, never augmented.
    pub fn eval(data: Arc<dyn Batches>, batch_size: usize) -> Self {
        let len = data.len();
        Self {
            data,
            range: (0, len),
            batch_size: batch_size.max(1),
            seed: 0,
            shuffle: false,
            augment: false,
            epoch: Arc::new(AtomicUsize::new(0)),
            device: crate::device::compute(),
            parts: 1,
            part: None,
        }
    }
}

struct IndexIter<'a> {
    loader: &'a IndexLoader,
    batches: std::vec::IntoIter<Vec<usize>>,
    rng: Option<SeededRng>,
    done: usize,
    total: usize,
}

impl Iterator for IndexIter<'_> {
    type Item = Result<Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let indices = self.batches.next()?;
        self.done += indices.len();
        Some(
            self.loader
                .data
                .batch(&indices, self.rng.as_mut(), &self.loader.device)
                .map_err(DatasetError::new),
        )
    }
}

impl DataLoaderIterator<Batch> for IndexIter<'_> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some("items".into()))
    }
}

impl DataLoader<Batch> for IndexLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<Batch> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        let (lo, hi) = self.range;
        let n = hi - lo;
        let size = self.global_batch();
        let mut batches: Vec<Vec<usize>> = if self.shuffle {
            collab_data::shuffled_batches(n, size, self.seed.wrapping_add(epoch as u64))
        } else {
            (0..n)
                .collect::<Vec<_>>()
                .chunks(size)
                .map(<[usize]>::to_vec)
                .collect()
        };
        if let Some(part) = self.part {
            // This device's share of each global batch; a short last batch may leave none.
            let (from, to) = (part * self.batch_size, (part + 1) * self.batch_size);
            batches = batches
                .into_iter()
                .map(|b| b[from.min(b.len())..to.min(b.len())].to_vec())
                .filter(|b| !b.is_empty())
                .collect();
        }
        batches.iter_mut().flatten().for_each(|i| *i += lo);
        // Device 0 draws the augmentation of an unsplit run; the others a stream of their own.
        let stream = self.part.unwrap_or(0) as u64;
        let rng = self.augment.then(|| {
            epoch_rng(
                self.seed
                    .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                epoch,
            )
        });
        Box::new(IndexIter {
            loader: self,
            batches: batches.into_iter(),
            rng,
            done: 0,
            total: self.items(),
        })
    }

    fn num_items(&self) -> usize {
        self.items()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<Batch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<Batch>> {
        if self.parts > 1 && self.part.is_none() {
            // burn-train's `split_dataloader` slices `num_items / devices` items per device,
            // in device order: the slice's start names the device.
            let per_device = (self.num_items() / self.parts).max(1);
            return Arc::new(Self {
                part: Some((start / per_device).min(self.parts - 1)),
                // Each device's loader counts its own epochs.
                epoch: Arc::new(AtomicUsize::new(self.epoch.load(Ordering::SeqCst))),
                ..self.clone()
            });
        }
        let lo = self.range.0;
        Arc::new(Self {
            range: (lo + start, (lo + end).min(self.range.1)),
            ..self.clone()
        })
    }
}
