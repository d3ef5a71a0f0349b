//! Writes a state dict in PyTorch's own file format, so that `torch.load(path)` (with its
//! default `weights_only=True`) returns an `OrderedDict` of tensors, as `torch.save(
//! model.state_dict(), path)` would have written it.
//!
//! The format (torch/serialization.py, `_save`): an uncompressed zip whose entries sit under
//! one folder (`archive/`): `data.pkl`, a pickle (protocol 2) of the dict in which each tensor
//! is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
//! backward_hooks)` and each storage a persistent id `('storage', torch.<T>Storage, key,
//! 'cpu', numel)`; `data/<key>`, the storage's raw little-endian bytes; `byteorder`; `version`.

use crate::checkpoint::tensor_bytes;
use crate::error::{Error, Result};
use std::io::Write as _;
use std::path::Path;
use tch::{Kind, Tensor};

/// The storage class PyTorch pickles for a dtype.
fn storage_class(k: Kind) -> Result<&'static str> {
    Ok(match k {
        Kind::Float => "FloatStorage",
        Kind::Double => "DoubleStorage",
        Kind::Half => "HalfStorage",
        Kind::BFloat16 => "BFloat16Storage",
        Kind::Int64 => "LongStorage",
        Kind::Int => "IntStorage",
        Kind::Int16 => "ShortStorage",
        Kind::Int8 => "CharStorage",
        Kind::Uint8 => "ByteStorage",
        Kind::Bool => "BoolStorage",
        other => {
            return Err(Error::msg(format!(
                "no PyTorch storage class for {other:?}"
            )))
        }
    })
}

/// A pickle (protocol 2) being written opcode by opcode.
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: u8) {
        self.0.push(b);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        if let Ok(small) = i32::try_from(v) {
            self.op(b'J');
            self.0.extend_from_slice(&small.to_le_bytes());
        } else {
            // LONG1: 8 little-endian two's-complement bytes.
            self.op(0x8a);
            self.op(8);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn tuple_of_ints(&mut self, v: &[i64]) {
        if v.is_empty() {
            self.op(b')');
            return;
        }
        self.op(b'(');
        for &x in v {
            self.int(x);
        }
        self.op(b't');
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
}

/// Writes `tensors` (names in order) to `path` as `torch.save` writes a state dict.
pub fn write_state_dict(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut p = Pickle(vec![0x80, 2]);
    p.empty_ordered_dict();
    p.op(b'(');
    for (key, (name, t)) in tensors.iter().enumerate() {
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        // The storage, as a persistent id.
        p.op(b'(');
        p.str("storage");
        p.global("torch", storage_class(t.kind())?);
        p.str(&key.to_string());
        p.str("cpu");
        p.int(t.numel() as i64);
        p.op(b't');
        p.op(b'Q');
        p.int(0);
        let size = t.size();
        p.tuple_of_ints(&size);
        // Contiguous strides.
        let mut stride = vec![1i64; size.len()];
        for i in (0..size.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * size[i + 1].max(1);
        }
        p.tuple_of_ints(&stride);
        p.op(0x89); // NEWFALSE: requires_grad
        p.empty_ordered_dict();
        p.op(b't');
        p.op(b'R');
    }
    p.op(b'u');
    p.op(b'.');

    let tmp = path.with_extension("pt.tmp");
    // A failed write leaves no temporary file behind.
    write_zip(&p.0, tensors, &tmp)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::Io(path.to_path_buf(), e)))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Writes the zip archive of `torch.save` (the pickle `pkl`, then each tensor's data) to `tmp`,
/// a new file ([`crate::checkpoint::create_fresh`]: a link there is replaced, not followed).
fn write_zip(pkl: &[u8], tensors: &[(String, Tensor)], tmp: &Path) -> Result<()> {
    let io = |e: std::io::Error| Error::Io(tmp.to_path_buf(), e);
    let zerr = |e: zip::result::ZipError| Error::msg(format!("{}: {e}", tmp.display()));
    let f = crate::checkpoint::create_fresh(tmp)?;
    let mut z = zip::ZipWriter::new(f);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let stem = "archive";
    z.start_file(format!("{stem}/data.pkl"), stored)
        .map_err(zerr)?;
    z.write_all(pkl).map_err(io)?;
    z.start_file(format!("{stem}/byteorder"), stored)
        .map_err(zerr)?;
    z.write_all(b"little").map_err(io)?;
    for (key, (_, t)) in tensors.iter().enumerate() {
        z.start_file(format!("{stem}/data/{key}"), stored)
            .map_err(zerr)?;
        z.write_all(&tensor_bytes(t)).map_err(io)?;
    }
    z.start_file(format!("{stem}/version"), stored)
        .map_err(zerr)?;
    z.write_all(b"3\n").map_err(io)?;
    z.finish().map_err(zerr)?;
    Ok(())
}
