//! Token files: little-endian u16 ids while the vocabulary fits 65,536, u32 above it.
//! `meta.json` records which (`dtype`: "u16le" or "u32le").
//!
//! Training reads them through a memory map, so a trainer's memory does not grow with the
//! corpus; writing streams through a hashing buffered writer into a temp file that is renamed
//! into place, so a killed `prepare` leaves no half file under the final name.

use crate::error::{Error, IoContext, Result};
use crate::util::temp_sibling;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// How ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// The narrowest type that holds every id of a vocabulary of `vocab` tokens.
    pub fn for_vocab(vocab: u64) -> Dtype {
        if vocab <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "u16le",
            Dtype::U32 => "u32le",
        }
    }
    pub fn parse(s: &str, file: &Path) -> Result<Dtype> {
        match s {
            "u16le" => Ok(Dtype::U16),
            "u32le" => Ok(Dtype::U32),
            other => Err(Error::hint(
                format!("{}: token dtype {other:?} is not u16le or u32le", file.display()),
                "rerun `tinylm prepare` to rebuild the token files",
            )),
        }
    }
    pub fn width(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

enum Store {
    Map(memmap2::Mmap),
    /// An empty file (a zero-length map is not allowed) or ids built in memory.
    Owned(Vec<u8>),
}

/// The ids of one split, read in place.
pub struct Tokens {
    store: Store,
    dtype: Dtype,
    len: usize,
}

impl Tokens {
    /// Map a token file. Its hash was checked against meta.json just before, by whoever
    /// opened the prepared directory.
    pub fn open(path: &Path, dtype: Dtype) -> Result<Tokens> {
        let f = fs::File::open(path).at(path)?;
        let n = f.metadata().at(path)?.len() as usize;
        if !n.is_multiple_of(dtype.width()) {
            return Err(Error::hint(
                format!("{}: {n} bytes is not a whole number of {} ids", path.display(), dtype.name()),
                "the file is damaged: rerun `tinylm prepare` to rebuild it",
            ));
        }
        let store = if n == 0 {
            Store::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and tinylm never writes a token file in place (new
            // files are renamed over old ones, which leaves this map on the old inode). Another
            // program truncating the file while it is mapped would be the only hazard.
            Store::Map(unsafe { memmap2::Mmap::map(&f) }.at(path)?)
        };
        Ok(Tokens { store, dtype, len: n / dtype.width() })
    }

    /// Ids held in memory (tests and small tools).
    pub fn from_ids(ids: &[u32], dtype: Dtype) -> Tokens {
        let mut bytes = Vec::with_capacity(ids.len() * dtype.width());
        for &id in ids {
            push_id(&mut bytes, id, dtype);
        }
        Tokens { store: Store::Owned(bytes), dtype, len: ids.len() }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Map(m) => m,
            Store::Owned(v) => v,
        }
    }

    /// The id at position `i` (panics past the end, like a slice).
    pub fn get(&self, i: usize) -> u32 {
        let b = self.bytes();
        match self.dtype {
            Dtype::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            Dtype::U32 => u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        }
    }

    /// Append ids `start..end` to `out`.
    pub fn extend_into(&self, out: &mut Vec<u32>, start: usize, end: usize) {
        assert!(start <= end && end <= self.len, "token range {start}..{end} past {}", self.len);
        let w = self.dtype.width();
        let b = &self.bytes()[start * w..end * w];
        match self.dtype {
            Dtype::U16 => out.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            Dtype::U32 => out.extend(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
    }

    /// Ids `start..end` as a vector.
    pub fn range(&self, start: usize, end: usize) -> Vec<u32> {
        let mut v = Vec::with_capacity(end - start);
        self.extend_into(&mut v, start, end);
        v
    }
}

fn push_id(out: &mut Vec<u8>, id: u32, dtype: Dtype) {
    match dtype {
        Dtype::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
        Dtype::U32 => out.extend_from_slice(&id.to_le_bytes()),
    }
}

/// A token file being written: ids go through a buffer and the SHA-256 into `<name>.tmp-*`,
/// and `finish` flushes, syncs and renames it into place.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<fs::File>>,
    hash: Sha256,
    dtype: Dtype,
    buf: Vec<u8>,
    count: u64,
}

impl Writer {
    pub fn create(path: &Path, dtype: Dtype) -> Result<Writer> {
        let tmp = temp_sibling(path);
        let f = fs::File::create(&tmp).at(&tmp)?;
        Ok(Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, f)),
            hash: Sha256::new(),
            dtype,
            buf: Vec::new(),
            count: 0,
        })
    }

    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        self.buf.clear();
        for &id in ids {
            if self.dtype == Dtype::U16 && id > u16::MAX as u32 {
                return Err(Error::msg(format!("token id {id} does not fit u16 ({})", self.path.display())));
            }
            push_id(&mut self.buf, id, self.dtype);
        }
        self.hash.update(&self.buf);
        if let Some(out) = self.out.as_mut() {
            out.write_all(&self.buf).at(&self.tmp)?;
        }
        self.count += ids.len() as u64;
        Ok(())
    }

    /// Flush, sync and rename into place; returns (ids written, SHA-256 of the file).
    pub fn finish(mut self) -> Result<(u64, String)> {
        let out = self.out.take().expect("finish once");
        let f = out.into_inner().map_err(|e| Error::Io { path: self.tmp.clone(), source: e.into_error() })?;
        f.sync_all().at(&self.tmp)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).at(&self.path)?;
        let hex = crate::util::hex(&std::mem::take(&mut self.hash).finalize());
        Ok((self.count, hex))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Not finished (an error on the way): leave nothing behind.
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_widths_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for (dtype, ids) in
            [(Dtype::U16, vec![0u32, 1, 65535, 7]), (Dtype::U32, vec![0, 65536, 1_048_575, 3])]
        {
            let p = dir.path().join(format!("{}.bin", dtype.name()));
            let mut w = Writer::create(&p, dtype).unwrap();
            w.push(&ids[..2]).unwrap();
            w.push(&ids[2..]).unwrap();
            let (n, sha) = w.finish().unwrap();
            assert_eq!(n, 4);
            assert_eq!(sha, crate::util::sha256_file(&p).unwrap());
            let t = Tokens::open(&p, dtype).unwrap();
            assert_eq!(t.len(), 4);
            assert_eq!(t.range(0, 4), ids);
            assert_eq!(t.get(2), ids[2]);
            assert_eq!(Tokens::from_ids(&ids, dtype).range(1, 3), ids[1..3]);
        }
        let mut w = Writer::create(&dir.path().join("x.bin"), Dtype::U16).unwrap();
        assert!(w.push(&[70_000]).is_err(), "an id past u16 must be refused, never wrapped");
        assert_eq!(Dtype::for_vocab(65536), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65537), Dtype::U32);
    }
}
