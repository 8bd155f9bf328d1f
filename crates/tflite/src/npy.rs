//! NumPy `.npy` files (version 1.0, little-endian, C order) for int8 and float32 arrays: how
//! inputs and golden outputs travel to and from the Python validators in `../shared/tools`.

use std::path::Path;

use crate::TfliteError;
use crate::interp::Data;

/// Write `data` with `shape` as a `.npy` file (temp file + rename).
pub fn write(path: &Path, shape: &[usize], data: &Data) -> Result<(), TfliteError> {
    let count: usize = shape.iter().product();
    if count != data.len() {
        return Err(TfliteError::Input(format!(
            "{} values do not fill shape {shape:?}",
            data.len()
        )));
    }
    let descr = match data {
        Data::I8(_) => "|i1",
        Data::F32(_) => "<f4",
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    match data {
        Data::I8(v) => bytes.extend(v.iter().map(|b| *b as u8)),
        Data::F32(v) => v
            .iter()
            .for_each(|f| bytes.extend_from_slice(&f.to_le_bytes())),
    }
    crate::writer::write_atomic(path, &bytes)
}

/// Read an int8 or float32 `.npy` file: `(shape, values)`.
pub fn read(path: &Path) -> Result<(Vec<usize>, Data), TfliteError> {
    let bytes = std::fs::read(path).map_err(|e| TfliteError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let bad = |why: &str| TfliteError::Input(format!("{}: {why}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown .npy version")),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in the header"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| bad("shape too large"))?;
    let body = &bytes[start + len..];
    let data = if header.contains("'descr': '|i1'") {
        if body.len() != count {
            return Err(bad("size does not match the shape"));
        }
        Data::I8(body.iter().map(|b| *b as i8).collect())
    } else if header.contains("'descr': '<f4'") {
        if body.len() != count.saturating_mul(4) {
            return Err(bad("size does not match the shape"));
        }
        Data::F32(
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    } else {
        return Err(bad(
            "only int8 ('|i1') and float32 ('<f4') arrays are supported",
        ));
    };
    Ok((shape, data))
}
