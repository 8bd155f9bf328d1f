//! NumPy's `.npy` format: the header (versions 1.0, 2.0 and 3.0) and the little-endian,
//! C-order arrays of the common numeric types, read into memory and written. This is how data
//! sets given as arrays ([`crate::arrays`]) come in, and how tests hand arrays to the Python
//! validators.
//!
//! A file is the magic `\x93NUMPY`, a version (major, minor), the header length (2 bytes in
//! version 1, 4 in versions 2 and 3), a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (10, 32, 32, 3), }` padded with spaces
//! and a newline, then the values.

use std::path::Path;

use crate::DataError;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The element types read: NumPy's `<f4`, `<f8`, `|u1`, `|i1`, `<i2`, `<i4`, `<i8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `float32`.
    F32,
    /// `float64`.
    F64,
    /// `uint8`.
    U8,
    /// `int8`.
    I8,
    /// `int16`.
    I16,
    /// `int32`.
    I32,
    /// `int64`.
    I64,
}

impl Dtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    /// NumPy's type string (`descr`) for this type, little-endian.
    pub fn descr(self) -> &'static str {
        match self {
            Self::F32 => "<f4",
            Self::F64 => "<f8",
            Self::U8 => "|u1",
            Self::I8 => "|i1",
            Self::I16 => "<i2",
            Self::I32 => "<i4",
            Self::I64 => "<i8",
        }
    }

    /// Whether the values are integers.
    pub fn is_integer(self) -> bool {
        !matches!(self, Self::F32 | Self::F64)
    }

    /// The type of a `descr`, or why it is refused (big-endian, Fortran-style structured
    /// types, unsupported kinds), with what to do instead.
    fn parse(descr: &str) -> Result<Self, String> {
        let (order, kind) = match descr.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
            _ => ('|', descr),
        };
        let dtype = match kind {
            "f4" => Self::F32,
            "f8" => Self::F64,
            "u1" => Self::U8,
            "i1" => Self::I8,
            "i2" => Self::I16,
            "i4" => Self::I32,
            "i8" => Self::I64,
            _ => {
                return Err(format!(
                    "element type '{descr}' is not supported; use float32, float64, uint8, int8, \
                     int16, int32 or int64 (e.g. a.astype('float32'))"
                ));
            }
        };
        if order == '>' && dtype.size() > 1 {
            return Err(format!(
                "the values are big-endian ('{descr}'); save a little-endian copy: \
                 a.astype(a.dtype.newbyteorder('<'))"
            ));
        }
        if order == '=' && cfg!(target_endian = "big") {
            return Err(format!("native byte order ('{descr}') of another machine"));
        }
        Ok(dtype)
    }
}

/// One array read from a `.npy` file: shape, type and the raw little-endian values in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The element type.
    pub dtype: Dtype,
    bytes: Vec<u8>,
}

/// A Python literal of the header.
#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Int(u64),
    Seq(Vec<Literal>),
    Dict(Vec<(String, Literal)>),
}

/// A tiny parser of the Python literals NumPy writes in headers (dict, str, bool, int,
/// tuple, list).
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self
            .text
            .get(self.at)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at byte {} of the header",
                c as char, self.at
            ))
        }
    }

    fn value(&mut self) -> Result<Literal, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.at += 1;
                let start = self.at;
                while self.text.get(self.at).is_some_and(|c| *c != q) {
                    self.at += 1;
                }
                let s = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                self.expect(q)?;
                Ok(Literal::Str(s))
            }
            Some(open @ (b'(' | b'[')) => {
                self.at += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                while self.peek() != Some(close) {
                    items.push(self.value()?);
                    if self.peek() == Some(b',') {
                        self.at += 1;
                    } else {
                        break;
                    }
                }
                self.expect(close)?;
                Ok(Literal::Seq(items))
            }
            Some(b'{') => {
                self.at += 1;
                let mut items = Vec::new();
                while self.peek() != Some(b'}') {
                    let Literal::Str(key) = self.value()? else {
                        return Err("a header key is not a string".into());
                    };
                    self.expect(b':')?;
                    items.push((key, self.value()?));
                    if self.peek() == Some(b',') {
                        self.at += 1;
                    } else {
                        break;
                    }
                }
                self.expect(b'}')?;
                Ok(Literal::Dict(items))
            }
            Some(c) if c.is_ascii_alphanumeric() => {
                let start = self.at;
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.text[start..self.at]).unwrap_or("");
                match word {
                    "True" => Ok(Literal::Bool(true)),
                    "False" => Ok(Literal::Bool(false)),
                    w => w
                        .trim_end_matches('L')
                        .parse()
                        .map(Literal::Int)
                        .map_err(|_| format!("unexpected `{w}` in the header")),
                }
            }
            other => Err(format!(
                "unexpected {} at byte {} of the header",
                other.map_or("end".into(), |c| format!("'{}'", c as char)),
                self.at
            )),
        }
    }
}

/// Parse the header dict: `(descr, fortran_order, shape)`.
fn parse_header(text: &[u8]) -> Result<(Literal, bool, Vec<usize>), String> {
    let mut parser = Parser { text, at: 0 };
    let Literal::Dict(items) = parser.value()? else {
        return Err("the header is not a dict".into());
    };
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("the header has no '{key}'"))
    };
    let descr = get("descr")?;
    let fortran = match get("fortran_order")? {
        Literal::Bool(b) => b,
        other => return Err(format!("'fortran_order' is {other:?}, not True or False")),
    };
    let shape = match get("shape")? {
        Literal::Seq(dims) => dims
            .into_iter()
            .map(|d| match d {
                Literal::Int(n) => {
                    usize::try_from(n).map_err(|_| "a dimension is too large".into())
                }
                other => Err(format!("a dimension is {other:?}, not a whole number")),
            })
            .collect::<Result<Vec<_>, String>>()?,
        other => return Err(format!("'shape' is {other:?}, not a tuple")),
    };
    Ok((descr, fortran, shape))
}

impl NpyArray {
    /// Parse a whole `.npy` file held in `bytes`; `path` names it in errors (for a member of an
    /// `.npz`, `archive.npz:x.npy`).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, DataError> {
        let bad = |why: String| DataError::format(path, why);
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(bad(
                "not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save".into(),
            ));
        }
        let (len, start): (usize, usize) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => {
                return Err(bad(format!(
                    ".npy format version {v}.{} is not supported (1.0, 2.0 and 3.0 are)",
                    bytes[7]
                )));
            }
        };
        let header = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| bad(format!("the header ({len} bytes) is cut short")))?;
        let (descr, fortran, shape) =
            parse_header(header).map_err(|e| bad(format!("bad .npy header: {e}")))?;
        let dtype = match descr {
            Literal::Str(d) => Dtype::parse(&d).map_err(bad)?,
            _ => {
                return Err(bad(
                    "structured (record) arrays are not supported; save one plain numeric \
                     array per key"
                        .into(),
                ));
            }
        };
        if fortran && shape.iter().filter(|d| **d > 1).count() > 1 {
            return Err(bad(format!(
                "the array {shape:?} is stored in Fortran (column-major) order; save a C-order \
                 copy: numpy.save(path, numpy.ascontiguousarray(a))"
            )));
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .and_then(|c| c.checked_mul(dtype.size()))
            .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        let body = &bytes[start + len..];
        if body.len() != count {
            return Err(bad(format!(
                "the header says {shape:?} of {} ({count} bytes) but {} bytes follow it \
                 (truncated or not written by numpy.save)",
                dtype.descr(),
                body.len()
            )));
        }
        Ok(Self {
            shape,
            dtype,
            bytes: body.to_vec(),
        })
    }

    /// Read a `.npy` file.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The values as `f32` (64-bit values rounded), C order.
    pub fn to_f32(&self) -> Vec<f32> {
        let b = &self.bytes;
        match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32)
                .collect(),
            _ => self.ints().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// The values as `i64` when the type is an integer one, C order.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        self.dtype.is_integer().then(|| self.ints())
    }

    fn ints(&self) -> Vec<i64> {
        let b = &self.bytes;
        match self.dtype {
            Dtype::U8 => b.iter().map(|v| *v as i64).collect(),
            Dtype::I8 => b.iter().map(|v| *v as i8 as i64).collect(),
            Dtype::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
            Dtype::F32 | Dtype::F64 => self.to_f32().into_iter().map(|v| v as i64).collect(),
        }
    }
}

/// The start of a `.npy` file for `dtype` and `shape` in C order: magic, version, header length
/// and the header padded so the values start at a multiple of 64 bytes (version 1.0; 2.0 when
/// the header needs more than 65,535 bytes).
pub fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = match dims.len() {
        1 => format!("{},", dims[0]),
        _ => dims.join(", "),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({dims}), }}",
        dtype.descr()
    );
    // Padded with at most 63 spaces and the newline, the dict must fit version 1's u16.
    let v1 = dict.len() + 64 <= u16::MAX as usize;
    let prefix = if v1 { 10 } else { 12 };
    while (prefix + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = MAGIC.to_vec();
    if v1 {
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    bytes.extend_from_slice(dict.as_bytes());
    bytes
}

/// A whole `.npy` file of `f32` values with `shape`; `None` when the values do not fill it.
pub fn encode_f32(shape: &[usize], values: &[f32]) -> Option<Vec<u8>> {
    (shape.iter().product::<usize>() == values.len()).then(|| {
        let mut bytes = header(Dtype::F32, shape);
        values
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        bytes
    })
}

/// A whole `.npy` file of `i64` values with `shape`; `None` when the values do not fill it.
pub fn encode_i64(shape: &[usize], values: &[i64]) -> Option<Vec<u8>> {
    (shape.iter().product::<usize>() == values.len()).then(|| {
        let mut bytes = header(Dtype::I64, shape);
        values
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        bytes
    })
}

/// Write `values` with `shape` as a `.npy` file of `float32`.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<(), DataError> {
    let bytes = encode_f32(shape, values).ok_or_else(|| DataError::InvalidSetting {
        field: "npy shape",
        reason: format!("{} values do not fill shape {shape:?}", values.len()),
    })?;
    std::fs::write(path, bytes).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: u8, dict: &str, body: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[version, 0]);
        if version == 1 {
            b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn every_version_and_type_reads() {
        let p = Path::new("a.npy");
        let body: Vec<u8> = [1i16, -2, 300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for version in [1, 2, 3] {
            let dict = "{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }\n";
            let a = NpyArray::parse(&file(version, dict, &body), p).unwrap();
            assert_eq!((a.shape.clone(), a.dtype), (vec![3], Dtype::I16));
            assert_eq!(a.to_i64().unwrap(), vec![1, -2, 300]);
            assert_eq!(a.to_f32(), vec![1.0, -2.0, 300.0]);
        }
        let cases: [(Dtype, Vec<u8>, Vec<f32>); 6] = [
            (Dtype::F64, (-1.5f64).to_le_bytes().to_vec(), vec![-1.5]),
            (Dtype::U8, vec![255], vec![255.0]),
            (Dtype::I8, vec![0x80], vec![-128.0]),
            (Dtype::I32, (-7i32).to_le_bytes().to_vec(), vec![-7.0]),
            (
                Dtype::I64,
                (1i64 << 40).to_le_bytes().to_vec(),
                vec![2f32.powi(40)],
            ),
            (Dtype::F32, 0.25f32.to_le_bytes().to_vec(), vec![0.25]),
        ];
        for (dtype, body, want) in cases {
            let mut bytes = header(dtype, &[1, 1]);
            bytes.extend_from_slice(&body);
            let a = NpyArray::parse(&bytes, p).unwrap();
            assert_eq!(
                (a.dtype, a.shape.clone(), a.to_f32()),
                (dtype, vec![1, 1], want)
            );
            assert_eq!(a.to_i64().is_some(), dtype.is_integer());
        }
        // A scalar and an empty array; a double-quoted, unpadded header.
        let s = NpyArray::parse(
            &file(
                1,
                "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":()}",
                &2f32.to_le_bytes(),
            ),
            p,
        )
        .unwrap();
        assert_eq!((s.shape.len(), s.to_f32()), (0, vec![2.0]));
        let e = NpyArray::parse(&header(Dtype::F32, &[0, 3]), p).unwrap();
        assert!(e.is_empty() && e.shape == vec![0, 3]);
    }

    #[test]
    fn written_headers_are_aligned_and_read_back() {
        for shape in [vec![], vec![7], vec![2, 3, 4]] {
            let n = shape.iter().product::<usize>();
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let bytes = encode_f32(&shape, &values).unwrap();
            assert_eq!((bytes.len() - n * 4) % 64, 0);
            let a = NpyArray::parse(&bytes, Path::new("w.npy")).unwrap();
            assert_eq!((a.to_f32(), a.shape), (values, shape));
        }
        // A header too long for version 1's u16 length is written as version 2.
        let many = vec![1; 25_000];
        let mut long = header(Dtype::F32, &many);
        assert_eq!(long[6], 2);
        long.extend_from_slice(&1f32.to_le_bytes());
        let a = NpyArray::parse(&long, Path::new("long.npy")).unwrap();
        assert_eq!((a.to_f32(), a.shape), (vec![1.0], many));
        let labels = encode_i64(&[3], &[0, 11, 5]).unwrap();
        let a = NpyArray::parse(&labels, Path::new("y.npy")).unwrap();
        assert_eq!(a.to_i64().unwrap(), vec![0, 11, 5]);
        assert!(encode_f32(&[2], &[1.0]).is_none());
    }

    #[test]
    fn refusals_say_why_and_what_to_do() {
        let p = Path::new("bad.npy");
        let err = |bytes: &[u8]| NpyArray::parse(bytes, p).unwrap_err().to_string();
        let body = [0u8; 16];
        let e = err(&file(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &body,
        ));
        assert!(
            e.contains("bad.npy") && e.contains("Fortran") && e.contains("ascontiguousarray"),
            "{e}"
        );
        // Fortran order of a vector is the same bytes: accepted.
        assert!(
            NpyArray::parse(
                &file(
                    1,
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (4,), }",
                    &body
                ),
                p
            )
            .is_ok()
        );
        let e = err(&file(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }",
            &body,
        ));
        assert!(e.contains("big-endian") && e.contains("'>f4'"), "{e}");
        assert!(
            NpyArray::parse(
                &file(
                    1,
                    "{'descr': '>u1', 'fortran_order': False, 'shape': (16,), }",
                    &body
                ),
                p
            )
            .is_ok()
        );
        let e = err(&file(
            1,
            "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }",
            &body,
        ));
        assert!(e.contains("'<c8'") && e.contains("float32"), "{e}");
        let e = err(&file(
            1,
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }",
            &body,
        ));
        assert!(e.contains("structured"), "{e}");
        let e = err(&file(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
            &body,
        ));
        assert!(
            e.contains("[5]") && e.contains("20 bytes") && e.contains("16 bytes"),
            "{e}"
        );
        let e = err(&file(1, "{'descr': '<f4', 'shape': (4,), }", &body));
        assert!(e.contains("fortran_order"), "{e}");
        let e = err(&file(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,",
            &body,
        ));
        assert!(e.contains("header"), "{e}");
        let e = err(&file(4, "{}", &body));
        assert!(e.contains("version 4"), "{e}");
        assert!(err(b"PK\x03\x04 not npy").contains("not a .npy"));
        let mut cut = file(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
            &body,
        );
        cut.truncate(20);
        assert!(err(&cut).contains("cut short"));
    }
}
