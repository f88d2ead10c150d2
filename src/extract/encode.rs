//! The encoders' pass over one split: images in saved blocks (resumable), then texts.

use super::options::{BLOCK_BATCHES, ExtractOptions, Skipped};
use crate::data::{Dataset, Sample};
use crate::encoders::ImageEncoder;
use crate::encoders::text::TextEncoder;
use crate::extract::progress::{Block, block_path};
use crate::features::{FeatureSplit, SplitMeta, Tokens};
use anyhow::{Result, ensure};
use candle_core::Device;
use half::f16;
use std::collections::HashMap;
use std::path::PathBuf;

/// Encodes the texts of `samples` (each distinct text once): the pooled rows and, with
/// `tokens`, the token features padded to the longest text (see [`crate::features`]). Training
/// needs every text; other splits may have none.
pub(super) fn encode_texts(split: &str, samples: &[Sample], enc: &TextEncoder, batch: usize, tokens: bool) -> Result<(Option<Vec<f32>>, Option<Tokens>)> {
    if let Some(s) = samples.iter().find(|s| s.text.is_none()) {
        ensure!(split != "train", "training sample {} has no text", s.describe());
        return Ok((None, None));
    }
    let mut unique: Vec<&str> = samples.iter().map(|s| s.text.as_deref().unwrap()).collect();
    unique.sort_unstable();
    unique.dedup();
    let mut rows: HashMap<&str, Vec<f32>> = HashMap::new();
    // Per distinct text: its real tokens [n_i, H] in f16.
    let mut token_rows: HashMap<&str, Vec<f16>> = HashMap::new();
    // Batches of texts of one token length: nothing padded, so that a text's features do not
    // depend on the texts beside it (a shard's cache is a slice of the whole one's).
    let lens: Vec<usize> = unique.iter().map(|t| enc.token_ids(t).map(|ids| ids.len())).collect::<Result<_>>()?;
    let mut by_len: Vec<(usize, &str)> = lens.into_iter().zip(unique.iter().copied()).collect();
    by_len.sort_unstable();
    let groups = by_len.chunk_by(|a, b| a.0 == b.0).flat_map(|g| g.chunks(batch.max(1)));
    for group in groups {
        let chunk: Vec<&str> = group.iter().map(|(_, t)| *t).collect();
        let chunk = &chunk[..];
        let pooled = if tokens {
            let (pooled, tok) = enc.embed_with_tokens(chunk)?;
            for (t, row) in chunk.iter().zip(tok) {
                token_rows.insert(t, row.iter().map(|&x| f16::from_f32(x)).collect());
            }
            pooled
        } else {
            enc.embed(chunk)?
        };
        for (t, row) in chunk.iter().zip(pooled.to_vec2::<f32>()?) {
            rows.insert(t, row);
        }
    }
    let pooled = samples.iter().flat_map(|s| rows[s.text.as_deref().unwrap()].clone()).collect();
    if !tokens {
        return Ok((Some(pooled), None));
    }
    let dim = enc.token_dim();
    let len = token_rows.values().map(|t| t.len() / dim).max().unwrap_or(1).max(1);
    let mut out = Tokens { data: vec![f16::ZERO; samples.len() * len * dim], len, dim, mask: Some(vec![0; samples.len() * len]) };
    let mask = out.mask.as_mut().unwrap();
    for (r, s) in samples.iter().enumerate() {
        let t = &token_rows[s.text.as_deref().unwrap()];
        out.data[r * len * dim..r * len * dim + t.len()].copy_from_slice(t);
        mask[r * len..r * len + t.len() / dim].fill(1);
    }
    Ok((Some(pooled), Some(out)))
}

/// One extraction: the encoders, the options and the progress folder.
pub(super) struct Extraction<'a> {
    pub image_enc: &'a dyn ImageEncoder,
    pub text_enc: &'a TextEncoder,
    pub opts: &'a ExtractOptions,
    pub partial: PathBuf,
    pub dev: &'a Device,
}

impl Extraction<'_> {
    /// Runs the blocks of `samples` not yet in the progress folder through the image encoder,
    /// saving each.
    fn encode_images(&self, name: &str, samples: &[Sample]) -> Result<Vec<Block>> {
        let (image_enc, opts, partial, dev) = (self.image_enc, self.opts, &self.partial, self.dev);
        let block_len = opts.batch.max(1) * BLOCK_BATCHES;
        let block_path = |b: usize| block_path(partial, name, b);
        let bar = crate::progress::bar(opts.progress, samples.len() as u64, "images", &format!("extract {name}"));
        let mut blocks: Vec<Option<Block>> = Vec::new();
        let mut pending = Vec::new();
        for (b, chunk) in samples.chunks(block_len).enumerate() {
            if block_path(b).exists() {
                blocks.push(Some(Block::read(&block_path(b))?));
                bar.inc(chunk.len() as u64);
            } else {
                blocks.push(None);
                let batch = opts.batch.max(1);
                pending.extend(chunk.chunks(batch).enumerate().map(|(j, samples)| (b, j * batch, samples)));
            }
        }
        if bar.position() > 0 && !bar.is_hidden() {
            bar.println(format!("{name}: resuming after {} saved images", bar.position()));
        }
        let pre = image_enc.preprocess();
        // Decode the next batch on another thread while this one runs through the encoder.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let jobs = pending.clone();
            scope.spawn(move || {
                for (b, _, batch) in jobs {
                    let paths: Vec<_> = batch.iter().map(|s| s.image.clone()).collect();
                    if tx.send((b, pre.batch(&paths, dev))).is_err() {
                        return;
                    }
                }
            });
            let mut current = Block::default();
            for (i, (b, decoded)) in rx.into_iter().enumerate() {
                let (_, first, batch) = pending[i];
                let (x, status) = decoded?;
                for (j, (s, st)) in batch.iter().zip(status).enumerate() {
                    match st {
                        Ok(key) => current.kept.push((first + j, key)),
                        Err(e) if opts.skip_bad => {
                            bar.println(format!("skipped {}: {e:#}", s.id));
                            current.skipped.push(Skipped {
                                split: name.into(),
                                id: s.id.clone(),
                                image: s.image.clone(),
                                error: format!("{e:#}"),
                                origin: s.origin.clone(),
                            })
                        }
                        Err(e) => return Err(e.context(format!("{name} sample {} (use --skip-bad to leave out unreadable images)", s.describe()))),
                    }
                }
                if x.dim(0)? > 0 {
                    let f = if opts.tokens {
                        let (f, tokens) = image_enc.features_and_tokens(&x)?;
                        let (_, t, d) = tokens.dims3()?;
                        current.token_shape = Some((t, d));
                        current.visual_tokens.extend(tokens.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f16::from_f32));
                        f
                    } else {
                        image_enc.features(&x)?
                    };
                    current.dv = f.dim(1)?;
                    current.visual.extend(f.flatten_all()?.to_vec1::<f32>()?);
                }
                bar.inc(batch.len() as u64);
                if pending.get(i + 1).is_none_or(|(next, _, _)| *next != b) {
                    let done = std::mem::take(&mut current);
                    done.write(&block_path(b))?;
                    blocks[b] = Some(done);
                    if crate::interrupt::requested() {
                        let resume_hint = format!(
                            "{} holds the images encoded so far ({name}: {} of {}); run the same command again to continue",
                            partial.display(),
                            bar.position(),
                            samples.len()
                        );
                        return Err(crate::interrupt::Interrupted { resume_hint }.into());
                    }
                }
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        Ok(blocks.into_iter().map(|b| b.expect("every block encoded or loaded")).collect())
    }

    /// One split's cache rows (`None` if no image could be read) and its skipped samples.
    pub fn split(&self, name: &str, samples: &[Sample], ds: &Dataset) -> Result<(Option<FeatureSplit>, Vec<Skipped>)> {
        let (image_enc, text_enc) = (self.image_enc, self.text_enc);
        let block_len = self.opts.batch.max(1) * BLOCK_BATCHES;
        let blocks = self.encode_images(name, samples)?;
        let mut kept: Vec<Sample> = Vec::new();
        let mut keys = Vec::new();
        let mut visual = Vec::new();
        let mut skipped = Vec::new();
        let mut dv = 0;
        let mut token_shape = None;
        let mut visual_tokens = Vec::new();
        for (b, block) in blocks.into_iter().enumerate() {
            kept.extend(block.kept.iter().map(|&(k, _)| samples[b * block_len + k].clone()));
            keys.extend(block.kept.iter().map(|&(_, key)| key));
            visual.extend(block.visual);
            // Where each skipped row is now: the progress may be from before the dataset moved,
            // or its manifest was edited around the row.
            let rows = &samples[(b * block_len).min(samples.len())..((b + 1) * block_len).min(samples.len())];
            skipped.extend(block.skipped.into_iter().map(|s| match rows.iter().find(|r| r.id == s.id) {
                Some(r) => Skipped { image: r.image.clone(), origin: r.origin.clone(), ..s },
                None => s,
            }));
            dv = dv.max(block.dv);
            if !block.kept.is_empty() {
                ensure!(
                    block.token_shape.is_some() == self.opts.tokens,
                    "{name} block {b}: saved {} visual tokens",
                    if self.opts.tokens { "without" } else { "with" }
                );
                ensure!(token_shape.is_none() || token_shape == block.token_shape, "{name} block {b}: visual token shape differs from earlier blocks'");
                token_shape = block.token_shape;
                visual_tokens.extend(block.visual_tokens);
            }
        }
        if kept.is_empty() {
            return Ok((None, skipped));
        }
        let (text, text_tokens) = encode_texts(name, &kept, text_enc, 64, self.opts.tokens)?;
        let split = FeatureSplit {
            visual,
            dv,
            ds: if text.is_some() { text_enc.dim() } else { 0 },
            text,
            label: kept.iter().map(|s| s.label).collect(),
            meta: SplitMeta {
                classes: ds.classes.clone(),
                ids: kept.iter().map(|s| s.id.clone()).collect(),
                visual_encoder: image_enc.name().to_string(),
                text_encoder: text_enc.identity().name.clone(),
                dataset: ds.name.clone(),
                keys,
                groups: match kept.iter().all(|s| s.group.is_some()) {
                    true => kept.iter().map(|s| s.group.clone().unwrap_or_default()).collect(),
                    false => vec![],
                },
            },
            visual_tokens: token_shape.map(|(len, dim)| Tokens { data: visual_tokens, len, dim, mask: None }),
            text_tokens,
        };
        Ok((Some(split), skipped))
    }
}
