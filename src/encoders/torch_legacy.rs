//! Reader for legacy (pre-1.6, non-zip) PyTorch state-dict files, to convert them once to
//! safetensors. Layout: five pickles (magic number, protocol version, system info, the state
//! dict whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ..)`
//! with storages as persistent ids `('storage', StorageType, key, location, numel)`, and the
//! list of storage keys), then each storage in that order as a little-endian u64 element
//! count followed by its raw little-endian data.

use anyhow::{Context, Result, bail, ensure};
use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

fn read_pickle<R: BufRead>(r: &mut R) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    Ok(stack.finalize()?)
}

/// Skips a pickle whose value need not be parsed (the magic number is wider than i64).
fn skip_pickle<R: BufRead>(r: &mut R) -> Result<()> {
    // The magic-number pickle is `PROTO 2, LONG1 n <n bytes>, STOP`.
    let mut head = [0u8; 4];
    r.read_exact(&mut head)?;
    ensure!(head[0] == 0x80 && head[2] == 0x8a, "not a legacy PyTorch file (no magic number)");
    let mut rest = vec![0u8; head[3] as usize + 1];
    r.read_exact(&mut rest)?;
    ensure!(rest.last() == Some(&b'.'), "not a legacy PyTorch file (bad magic number)");
    Ok(())
}

/// Element types this reader supports, by PyTorch storage class.
#[derive(Clone, Copy, PartialEq)]
enum Elem {
    F32,
    I64,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::I64 => 8,
        }
    }
}

struct TensorRef {
    name: String,
    key: String,
    elem: Elem,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn usize_list(o: Object) -> Result<Vec<usize>> {
    Vec::<usize>::try_from(o).map_err(|o| anyhow::anyhow!("expected a tuple of sizes, got {o:?}"))
}

fn tensor_ref(name: String, value: Object) -> Result<TensorRef> {
    let (callable, args) = value.reduce().map_err(|_| anyhow::anyhow!("{name}: not a tensor"))?;
    match callable {
        Object::Class { module_name, class_name } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
        other => bail!("{name}: unsupported tensor constructor {other:?}"),
    }
    let mut args = args.tuple().map_err(|o| anyhow::anyhow!("{name}: bad arguments {o:?}"))?.into_iter();
    let mut next = || args.next().with_context(|| format!("{name}: too few arguments"));
    let storage = next()?.persistent_load().map_err(|o| anyhow::anyhow!("{name}: bad storage {o:?}"))?;
    let storage = storage.tuple().map_err(|o| anyhow::anyhow!("{name}: bad storage {o:?}"))?;
    ensure!(storage.len() >= 3, "{name}: bad storage id");
    let elem = match &storage[1] {
        Object::Class { class_name, .. } if class_name == "FloatStorage" => Elem::F32,
        Object::Class { class_name, .. } if class_name == "LongStorage" => Elem::I64,
        other => bail!("{name}: only float32 and int64 storages are supported, found {other:?}"),
    };
    let key = storage[2].clone().unicode().map_err(|o| anyhow::anyhow!("{name}: bad storage key {o:?}"))?;
    let offset = next()?.int().map_err(|o| anyhow::anyhow!("{name}: bad offset {o:?}"))? as usize;
    let size = usize_list(next()?)?;
    let stride = usize_list(next()?)?;
    Ok(TensorRef { name, key, elem, offset, size, stride })
}

/// Every tensor of a legacy state-dict file, by name, in file order.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut r = BufReader::new(file);
    let ctx = || format!("{}: not a readable legacy PyTorch file", path.display());
    skip_pickle(&mut r).with_context(ctx)?;
    read_pickle(&mut r).with_context(ctx)?; // protocol version
    read_pickle(&mut r).with_context(ctx)?; // system info
    let dict = read_pickle(&mut r).with_context(ctx)?.dict().map_err(|_| anyhow::anyhow!("{}: no state dict", path.display()))?;
    let keys = match read_pickle(&mut r).with_context(ctx)? {
        Object::List(k) => k.into_iter().map(|k| k.unicode().map_err(|o| anyhow::anyhow!("bad storage key {o:?}"))).collect::<Result<Vec<_>>>()?,
        other => bail!("{}: expected the storage key list, got {other:?}", path.display()),
    };
    let refs = dict
        .into_iter()
        // `_metadata` (module versions) is set on the dict as an attribute, which the pickle
        // reader merges in as an entry.
        .filter(|(name, _)| *name != Object::Unicode("_metadata".into()))
        .map(|(name, value)| {
            let name = name.unicode().map_err(|o| anyhow::anyhow!("bad key {o:?}"))?;
            tensor_ref(name, value)
        })
        .collect::<Result<Vec<_>>>()
        .with_context(|| path.display().to_string())?;
    let elem_of: HashMap<&str, Elem> = refs.iter().map(|t| (t.key.as_str(), t.elem)).collect();
    let file_len = std::fs::metadata(path)?.len() as usize;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let elem = *elem_of.get(key.as_str()).with_context(|| format!("{}: storage {key} is not used by any tensor", path.display()))?;
        let mut n = [0u8; 8];
        r.read_exact(&mut n).with_context(|| format!("{}: truncated before storage {key}", path.display()))?;
        let len = (u64::from_le_bytes(n) as usize).saturating_mul(elem.size());
        ensure!(len <= file_len, "{}: storage {key} claims {len} bytes, more than the file holds", path.display());
        let mut bytes = vec![0u8; len];
        r.read_exact(&mut bytes).with_context(|| format!("{}: truncated in storage {key}", path.display()))?;
        storages.insert(key, bytes);
    }
    let mut out = Vec::new();
    for t in refs {
        let data = storages.get(&t.key).with_context(|| format!("{}: storage {} missing", path.display(), t.key))?;
        let numel: usize = t.size.iter().product();
        // Element offsets through the strides (the usual contiguous case reads a plain run).
        let mut offsets = Vec::with_capacity(numel);
        for i in 0..numel {
            let (mut rem, mut off) = (i, t.offset);
            for (d, &s) in t.size.iter().zip(&t.stride).rev() {
                off += (rem % d) * s;
                rem /= d;
            }
            ensure!((off + 1) * t.elem.size() <= data.len(), "{}: {} reads past its storage", path.display(), t.name);
            offsets.push(off);
        }
        let at = |o: usize, w: usize| &data[o * w..(o + 1) * w];
        let tensor = match t.elem {
            Elem::F32 => Tensor::from_vec(offsets.iter().map(|&o| f32::from_le_bytes(at(o, 4).try_into().unwrap())).collect::<Vec<_>>(), t.size, &Device::Cpu)?,
            Elem::I64 => Tensor::from_vec(offsets.iter().map(|&o| i64::from_le_bytes(at(o, 8).try_into().unwrap())).collect::<Vec<_>>(), t.size, &Device::Cpu)?,
        };
        out.push((t.name, tensor));
    }
    Ok(out)
}

/// Converts a legacy file to safetensors (written atomically).
pub fn convert(input: &Path, output: &Path) -> Result<usize> {
    let tensors = read_state_dict(input)?;
    let n = tensors.len();
    let data = safetensors::serialize(tensors, None)?;
    crate::fsutil::write_atomic(output, &data)?;
    Ok(n)
}
