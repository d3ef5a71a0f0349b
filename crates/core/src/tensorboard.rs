//! TensorBoard event files: the scalars of a run's `metrics.jsonl` and its figures as images,
//! readable by `tensorboard --logdir runs/`.
//!
//! A file is a sequence of records (TFRecord framing: the length as a little-endian u64, its
//! masked CRC-32C, the bytes, their masked CRC-32C), each an `Event` protocol buffer
//! (tensorflow/core/util/event.proto: `wall_time` 1, `step` 2, `file_version` 3, `summary` 5;
//! summary.proto: `Summary.value` 1, `Value.tag` 1, `simple_value` 2, `image` 4;
//! `Image.height` 1, `width` 2, `colorspace` 3, `encoded_image_string` 4, `Value.metadata` 9;
//! `SummaryMetadata.plugin_data` 1, `PluginData.plugin_name` 1, `content` 2), and the HParams
//! dashboard's session records (tensorboard/plugins/hparams/plugin_data.proto:
//! `HParamsPluginData.version` 1, `session_start_info` 3, `session_end_info` 4;
//! `SessionStartInfo.hparams` 1, a map of google.protobuf.Value — `number_value` 2,
//! `string_value` 3 —, `start_time_secs` 5; `SessionEndInfo.status` 1, `end_time_secs` 2). The
//! few messages needed are encoded here by hand.

use crate::error::{Error, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The event file's name under a run's `tensorboard/` folder (TensorBoard reads any file whose
/// name holds `tfevents`).
pub const FILE: &str = "events.out.tfevents.0.reprise";

/// An event file being written: each event is appended as it is added (TensorBoard reads a
/// file that is still growing, and ignores a last record cut short by a kill).
#[derive(Debug)]
pub struct EventFile {
    path: PathBuf,
    file: std::fs::File,
}

impl EventFile {
    /// A new event file at `dir/FILE`, replacing any there, starting with the version record.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))?;
        let path = dir.join(FILE);
        let file = crate::checkpoint::create_fresh(&path)?;
        let mut f = EventFile { path, file };
        let mut ev = Vec::new();
        put_f64(&mut ev, 1, 0.0);
        put_bytes(&mut ev, 3, b"brain.Event:2");
        f.record(&ev)?;
        Ok(f)
    }

    /// The event file at `dir/FILE`, appended to if it is there, else new.
    pub fn append_or_new(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        if !path.is_file() {
            return Self::new(dir);
        }
        let file = crate::checkpoint::open_append(&path)?;
        Ok(EventFile { path, file })
    }

    /// Adds a scalar `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64, wall: f64) -> Result<()> {
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_f32(&mut v, 2, value as f32);
        self.summary(step, wall, &v)
    }

    /// Adds a PNG image `tag` at `step`.
    pub fn image(&mut self, tag: &str, step: u64, png: &[u8], wall: f64) -> Result<()> {
        let (w, h) = image::ImageReader::new(std::io::Cursor::new(png))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .ok_or_else(|| Error::msg(format!("{tag}: not a readable image")))?;
        let mut img = Vec::new();
        put_varint_field(&mut img, 1, u64::from(h));
        put_varint_field(&mut img, 2, u64::from(w));
        put_varint_field(&mut img, 3, 4); // RGBA
        put_bytes(&mut img, 4, png);
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_bytes(&mut v, 4, &img);
        self.summary(step, wall, &v)
    }

    /// Records the run as one session of TensorBoard's HParams dashboard: its hyperparameters
    /// (`hparams`: a name and a number or a text), started at `start` (seconds since 1970), and
    /// ended well at `end`; its metrics are the scalars of the same event file (the dashboard
    /// reads their last values), to which `metrics` are added at `step`.
    pub fn hparams(
        &mut self,
        hparams: &[(String, HValue)],
        metrics: &[(String, f64)],
        step: u64,
        (start, end): (f64, f64),
    ) -> Result<()> {
        let mut info = Vec::new();
        for (k, v) in hparams {
            let mut value = Vec::new();
            match v {
                HValue::Number(x) => put_f64(&mut value, 2, *x),
                HValue::Text(t) => put_bytes(&mut value, 3, t.as_bytes()),
            }
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, k.as_bytes());
            put_bytes(&mut entry, 2, &value);
            put_bytes(&mut info, 1, &entry);
        }
        put_f64(&mut info, 5, start);
        let mut data = Vec::new();
        put_bytes(&mut data, 3, &info);
        self.plugin_record(
            "_hparams_/session_start_info",
            "hparams",
            &data,
            step,
            start,
        )?;
        for (k, v) in metrics {
            self.scalar(k, step, *v, end)?;
        }
        let mut done = Vec::new();
        put_varint_field(&mut done, 1, 1); // STATUS_SUCCESS
        put_f64(&mut done, 2, end);
        let mut data = Vec::new();
        put_bytes(&mut data, 4, &done);
        self.plugin_record("_hparams_/session_end_info", "hparams", &data, step, end)
    }

    /// A summary value that is only `plugin`'s metadata, holding `content`.
    fn plugin_record(
        &mut self,
        tag: &str,
        plugin: &str,
        content: &[u8],
        step: u64,
        wall: f64,
    ) -> Result<()> {
        let mut pd = Vec::new();
        put_bytes(&mut pd, 1, plugin.as_bytes());
        put_bytes(&mut pd, 2, content);
        let mut meta = Vec::new();
        put_bytes(&mut meta, 1, &pd);
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_bytes(&mut v, 9, &meta);
        self.summary(step, wall, &v)
    }

    fn summary(&mut self, step: u64, wall: f64, value: &[u8]) -> Result<()> {
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, value);
        let mut ev = Vec::new();
        put_f64(&mut ev, 1, wall);
        put_varint_field(&mut ev, 2, step);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .map_err(|e| Error::Io(self.path.clone(), e))
    }
}

/// A hyperparameter's value on TensorBoard's HParams dashboard.
#[derive(Debug, Clone, PartialEq)]
pub enum HValue {
    /// A number (a learning rate, a seed).
    Number(f64),
    /// A text (an arm).
    Text(String),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

fn put_f64(out: &mut Vec<u8>, field: u64, v: f64) {
    put_varint(out, (field << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f32(out: &mut Vec<u8>, field: u64, v: f32) {
    put_varint(out, (field << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The TFRecord mask of a CRC.
fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_its_check_value() {
        // The standard check value of CRC-32C ("123456789").
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn records_frame_their_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut f = EventFile::new(d.path()).unwrap();
        f.scalar("loss", 3, 0.5, 12.0).unwrap();
        drop(f);
        let b = std::fs::read(d.path().join(FILE)).unwrap();
        let mut at = 0;
        let mut n = 0;
        while at < b.len() {
            let len = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
            let lcrc = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap());
            assert_eq!(lcrc, masked_crc32c(&b[at..at + 8]));
            let data = &b[at + 12..at + 12 + len];
            let dcrc = u32::from_le_bytes(b[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(dcrc, masked_crc32c(data));
            at += 16 + len;
            n += 1;
        }
        assert_eq!((at, n), (b.len(), 2));
    }
}
