//! What makes an image file unusable, found before any pixel is decoded: missing, empty, a header
//! that does not decode, too many pixels to decode safely, or data cut short (an interrupted copy
//! or download). The `image` crate decodes a JPEG cut short without an error, filling the missing
//! part with grey, so the end of the data is checked here, for JPEG, PNG and WebP alike.

use std::path::Path;

/// What to do with a manifest's image found empty or truncated.
const TRUNCATED_FIX: &str = "copy it again, or leave its line out";

/// The most pixels an image may have: Pillow's limit for a decompression bomb (twice its warning
/// threshold of 89,478,485). A 438 KB PNG of 20000 x 20000 pixels took 3.3 GB and 27 s to decode.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The most bytes an image may decode into: the `image` crate's own limit, which it reports only
/// once decoding starts ("Memory limit exceeded"); 16-bit RGBA reaches it at 67 megapixels.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// An image's width, height and decoded bytes, from its header.
pub fn header_size<R: std::io::BufRead + std::io::Seek>(reader: image::ImageReader<R>) -> image::ImageResult<(u32, u32, u64)> {
    use image::ImageDecoder;
    let d = reader.into_decoder()?;
    let (w, h) = d.dimensions();
    Ok((w, h, d.total_bytes()))
}

/// Why an image of `w` x `h` pixels that decodes into `bytes` is not decoded, if it is not: more
/// than [`MAX_PIXELS`] or [`MAX_DECODED_BYTES`].
pub fn too_big(w: u32, h: u32, bytes: u64) -> Option<String> {
    let n = w as u64 * h as u64;
    const FIX: &str = "downscale it first (the encoders see 224-260 pixels)";
    if n > MAX_PIXELS {
        return Some(format!("is {w} x {h} pixels ({} megapixels), over the {} megapixels marnet decodes; {FIX}", n / 1_000_000, MAX_PIXELS / 1_000_000));
    }
    (bytes > MAX_DECODED_BYTES).then(|| {
        format!(
            "is {w} x {h} pixels of {} bytes each, {} MB decoded, over the {} MB marnet decodes; {FIX}, or save it with 8 bits a channel",
            bytes / n.max(1),
            bytes >> 20,
            MAX_DECODED_BYTES >> 20
        )
    })
}

/// Why `bytes` (a whole image file) end before the image's data does, if they do: a JPEG without
/// its end marker after the first scan, a PNG without its `IEND` chunk, a WebP shorter than its
/// RIFF header says. Other formats, and data too short to tell, are left to the decoder.
pub fn truncation(bytes: &[u8]) -> Option<String> {
    let cut = match bytes {
        [0xFF, 0xD8, ..] => !jpeg_ends(bytes),
        [0x89, b'P', b'N', b'G', ..] => !bytes.windows(4).rev().any(|w| w == b"IEND"),
        [b'R', b'I', b'F', b'F', a, b, c, d, b'W', b'E', b'B', b'P', ..] => (bytes.len() as u64) < u32::from_le_bytes([*a, *b, *c, *d]) as u64 + 8,
        _ => false,
    };
    cut.then(|| format!("is truncated: the file stops at {} bytes, before the image's data ends", bytes.len()))
}

/// Whether a JPEG's end-of-image marker (FF D9) follows the start of its first scan. The
/// segments before the scan are stepped over by their lengths (an EXIF thumbnail holds a JPEG of
/// its own, end marker included); inside a scan's data FF is always followed by 00 or a restart
/// marker, so FF D9 there is the end.
fn jpeg_ends(b: &[u8]) -> bool {
    let mut i = 2;
    loop {
        while b.get(i).is_some_and(|&x| x != 0xFF) {
            i += 1;
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return false };
        i += 1;
        match marker {
            // The start of a scan: the end marker must come after it.
            0xDA => return b[i..].windows(2).rev().any(|w| w == [0xFF, 0xD9]),
            // An end before any scan: a header-only file, which the decoder refuses itself.
            0xD9 => return true,
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => {}
            _ => match b.get(i..i + 2) {
                Some(len) => i += u16::from_be_bytes([len[0], len[1]]) as usize,
                None => return false,
            },
        }
    }
}

/// Why the image file at `path` cannot be used, if it cannot: missing, not a file, empty, a
/// header that does not decode, too many pixels, or truncated ([`truncation`]). Reads the whole
/// file.
pub fn file_problem(path: &Path) -> Option<String> {
    if !path.exists() {
        return Some(format!("not found at {} (paths are relative to the manifest's folder)", path.display()));
    }
    if !path.is_file() {
        return Some(format!("at {} is not a file", path.display()));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Some(format!("at {} cannot be opened: {e}", path.display())),
    };
    if bytes.is_empty() {
        return Some(format!("at {} is an empty file (0 bytes); {TRUNCATED_FIX}", path.display()));
    }
    let reader = match image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format() {
        Ok(r) => r,
        Err(e) => return Some(format!("at {} cannot be opened: {e}", path.display())),
    };
    match header_size(reader) {
        Ok((w, h, _)) if w == 0 || h == 0 => Some(format!("at {} has size {w} x {h}", path.display())),
        Ok((w, h, decoded)) => too_big(w, h, decoded)
            .map(|why| format!("at {} {why}", path.display()))
            .or_else(|| truncation(&bytes).map(|why| format!("at {} {why}; {TRUNCATED_FIX}", path.display()))),
        Err(image::ImageError::Unsupported(_)) => {
            Some(format!("at {} is not a JPEG, PNG or WebP image (judged by its contents); convert it, or leave its line out", path.display()))
        }
        Err(e) => Some(format!("at {} cannot be read as an image: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoded 96 x 64 pattern in `format`.
    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 7 + y * y) as u8, ((y * 3) ^ (x * 5)) as u8, (x * y) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn whole_images_pass_and_cut_ones_are_found() {
        for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png, image::ImageFormat::WebP] {
            let whole = encoded(format);
            assert_eq!(truncation(&whole), None, "{format:?} whole");
            let cut = &whole[..whole.len() * 2 / 3];
            assert!(truncation(cut).is_some_and(|w| w.contains("truncated")), "{format:?} cut");
            // Bytes after the end (a phone's appended data) are not a truncation.
            let padded = [&whole[..], &[0u8; 40]].concat();
            assert_eq!(truncation(&padded), None, "{format:?} padded");
        }
    }

    /// An image whose header claims more pixels than [`MAX_PIXELS`] is refused before decoding,
    /// by the manifest check and by `decode` alike.
    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        let mut bomb = encoded(image::ImageFormat::Jpeg);
        // The frame header (FF C0, length, precision) holds the height and width.
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let refused = crate::data::image::decode(&bomb, "upload").unwrap_err().to_string();
        assert!(refused.starts_with("upload: image is 60000 x 60000 pixels (3600 megapixels), over the 178 megapixels marnet decodes"), "{refused}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bomb.jpg"), &bomb).unwrap();
        let found = file_problem(&dir.path().join("bomb.jpg")).unwrap();
        assert!(
            found.ends_with(
                "bomb.jpg is 60000 x 60000 pixels (3600 megapixels), over the 178 megapixels marnet decodes; downscale it first (the encoders see 224-260 pixels)"
            ),
            "{found}"
        );
        assert_eq!(too_big(13_000, 13_000, 3 * 169_000_000), None, "169 megapixels of RGB pass");
        let deep = too_big(13_000, 13_000, 8 * 169_000_000).unwrap();
        assert_eq!(
            deep,
            "is 13000 x 13000 pixels of 8 bytes each, 1289 MB decoded, over the 512 MB marnet decodes; downscale it first (the encoders see 224-260 pixels), or save it with 8 bits a channel"
        );
    }

    /// A JPEG cut inside its scan still decodes (grey where the data is missing): the check is
    /// what catches it, in `decode` too. An EXIF-like segment holding FF D9 before the scan does
    /// not count as the end.
    #[test]
    fn a_cut_jpeg_decodes_but_is_refused() {
        let whole = encoded(image::ImageFormat::Jpeg);
        let sos = whole.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let cut = &whole[..sos + 40];
        assert!(image::load_from_memory(cut).is_ok(), "the decoder itself refuses it: the check is not needed");
        assert!(truncation(cut).is_some());
        let refused = crate::data::image::decode(cut, "upload").unwrap_err().to_string();
        assert!(refused.starts_with("upload: image is truncated"), "{refused}");
        let app1 = [&[0xFF, 0xE1, 0x00, 0x06][..], &[0xFF, 0xD9, 0xFF, 0xD9]].concat();
        let with_app1 = [&whole[..2], &app1, &cut[2..]].concat();
        assert!(truncation(&with_app1).is_some());
    }
}
