//! Reading images and making thumbnails: CPU work on a file, run by `Media` on blocking
//! threads. Formats are sniffed from the bytes (never the uploader's content type); only
//! PNG, JPEG, GIF and WebP are read. Dimensions come from the header before any pixel is
//! decoded, and the decoder runs under `image`'s allocation limit, so a decompression bomb or
//! a lying header is refused without the memory it asks for.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Cursor, Read, Seek},
    path::Path,
};

use image::{
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits,
    codecs::{jpeg::JpegEncoder, png::PngDecoder, webp::WebPDecoder},
    metadata::Orientation,
};

use crate::matrix::media::{ThumbnailBox, thumbnail_geometry};

/// JPEG quality of thumbnails made from JPEG photos (Synapse uses 80 too).
const JPEG_QUALITY: u8 = 80;
/// Decoder working memory beyond the decoded image itself (row buffers, palettes, tables).
const DECODER_SLACK: u64 = 16 * 1024 * 1024;

/// Why an image could not be thumbnailed.
#[derive(Debug)]
pub enum ThumbnailError {
    /// Not an image of a format this server reads.
    Unsupported,
    /// Larger than the server will decode.
    TooLarge,
    /// Damaged, truncated or not what its header says.
    Corrupt(String),
    /// Reading the file failed.
    Io(io::Error),
}

impl From<io::Error> for ThumbnailError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ImageError> for ThumbnailError {
    fn from(e: ImageError) -> Self {
        match e {
            // Over the allocation limit, or dimensions the decoder will not take.
            ImageError::Limits(_) => Self::TooLarge,
            ImageError::Unsupported(_) => Self::Unsupported,
            ImageError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Self::Corrupt("truncated".to_owned())
            }
            ImageError::IoError(e) => Self::Io(e),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

/// The image formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Gif,
    WebP,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::WebP => "image/webp",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Png => ImageFormat::Png,
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Gif => ImageFormat::Gif,
            Self::WebP => ImageFormat::WebP,
        }
    }
}

/// What the header of an image says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: Format,
    /// As displayed: EXIF rotations by a quarter turn swap the stored dimensions.
    pub width: u32,
    pub height: u32,
    /// More than one frame (GIF, animated WebP, APNG).
    pub animated: bool,
}

/// A thumbnail, encoded.
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

/// The format of the bytes at the start of a file, if it is one this server reads.
fn sniff(path: &Path) -> Result<Format, ThumbnailError> {
    let mut head = [0u8; SNIFF_LEN];
    let mut file = File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    format_of(&head[..filled])
}

/// Bytes of the start of a file that tell its image format.
pub const SNIFF_LEN: usize = 32;

fn format_of(head: &[u8]) -> Result<Format, ThumbnailError> {
    match image::guess_format(head) {
        Ok(ImageFormat::Png) => Ok(Format::Png),
        Ok(ImageFormat::Jpeg) => Ok(Format::Jpeg),
        Ok(ImageFormat::Gif) => Ok(Format::Gif),
        Ok(ImageFormat::WebP) => Ok(Format::WebP),
        _ => Err(ThumbnailError::Unsupported),
    }
}

/// Whether content starting with `head` (its first `SNIFF_LEN` bytes) is an image format
/// this server reads.
pub fn is_image(head: &[u8]) -> bool {
    format_of(head).is_ok()
}

/// The largest file that can hold an image of at most `max_pixels` pixels worth decoding:
/// eight bytes a pixel (16-bit RGBA stored uncompressed) and the decoder's slack. Larger
/// content is refused before it is fetched from a bucket.
pub fn max_image_file_size(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).saturating_add(DECODER_SLACK)
}

fn limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    // Four bytes a pixel is the 8-bit RGBA the largest accepted image decodes to.
    limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(DECODER_SLACK));
    limits
}

fn decoder(path: &Path, format: Format, max_pixels: u64) -> Result<impl ImageDecoder, ThumbnailError> {
    let mut reader = ImageReader::with_format(BufReader::new(File::open(path)?), format.image_format());
    reader.limits(limits(max_pixels));
    Ok(reader.into_decoder()?)
}

/// Read an image's format, dimensions and whether it is animated, decoding no pixels.
/// Images of more than `max_pixels` are refused here.
pub fn probe(path: &Path, max_pixels: u64) -> Result<ImageInfo, ThumbnailError> {
    let format = sniff(path)?;
    let mut decoder = decoder(path, format, max_pixels)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ThumbnailError::Corrupt("empty image".to_owned()));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = if swaps_axes(orientation) { (height, width) } else { (width, height) };
    let animated = match format {
        Format::Gif => gif_has_several_frames(BufReader::new(File::open(path)?))?,
        Format::WebP => WebPDecoder::new(BufReader::new(File::open(path)?))?.has_animation(),
        Format::Png => PngDecoder::new(BufReader::new(File::open(path)?))?.is_apng()?,
        Format::Jpeg => false,
    };
    Ok(ImageInfo { format, width, height, animated })
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Decode the image (its first frame) and make a thumbnail for `target`: JPEG for JPEG
/// photos, PNG (keeping transparency) for everything else. The caller has probed the image,
/// so its size is within `max_pixels`.
pub fn make(
    path: &Path,
    info: ImageInfo,
    target: ThumbnailBox,
    max_pixels: u64,
) -> Result<Thumbnail, ThumbnailError> {
    let mut decoder = decoder(path, info.format, max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    let ((x, y, w, h), (tw, th)) = thumbnail_geometry(image.width(), image.height(), target);
    let cropped = if (x, y, w, h) == (0, 0, image.width(), image.height()) {
        image
    } else {
        image.crop_imm(x, y, w, h)
    };
    let thumbnail = if (tw, th) == (cropped.width(), cropped.height()) {
        cropped
    } else {
        cropped.thumbnail_exact(tw, th)
    };
    encode(thumbnail, info.format)
}

fn encode(image: DynamicImage, source: Format) -> Result<Thumbnail, ThumbnailError> {
    let (width, height) = (image.width(), image.height());
    let mut bytes = Vec::new();
    let content_type = if source == Format::Jpeg {
        let rgb = image.into_rgb8();
        JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY).encode_image(&rgb)?;
        "image/jpeg"
    } else {
        let image = if image.color().has_alpha() {
            DynamicImage::ImageRgba8(image.into_rgba8())
        } else {
            DynamicImage::ImageRgb8(image.into_rgb8())
        };
        image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
        "image/png"
    };
    Ok(Thumbnail { bytes, content_type, width, height })
}

/// Whether a GIF has a second frame, walking its block structure without decoding any image
/// data. Malformed files count as not animated; the decoder judges them later.
pub fn gif_has_several_frames(mut r: impl BufRead + Seek) -> io::Result<bool> {
    match walk_gif(&mut r) {
        Ok(animated) => Ok(animated),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn walk_gif<R: BufRead + Seek>(r: &mut R) -> io::Result<bool> {
    fn byte(r: &mut impl Read) -> io::Result<u8> {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        Ok(b[0])
    }
    // Relative seeks keep a `BufReader`'s buffer; the skipped blocks are small.
    fn skip_sub_blocks(r: &mut (impl Read + Seek)) -> io::Result<()> {
        loop {
            match byte(r)? {
                0 => return Ok(()),
                len => r.seek_relative(i64::from(len))?,
            }
        }
    }
    // Colour tables hold 3 × 2^(n+1) bytes, n being the low three bits of a packed field.
    let table_len = |packed: u8| 3i64 << ((packed & 0x07) + 1);
    let mut header = [0u8; 13];
    r.read_exact(&mut header)?;
    if &header[..3] != b"GIF" {
        return Ok(false);
    }
    if header[10] & 0x80 != 0 {
        r.seek_relative(table_len(header[10]))?;
    }
    let mut frames = 0;
    loop {
        match byte(r)? {
            0x21 => {
                byte(r)?; // extension label
                skip_sub_blocks(r)?;
            }
            0x2C => {
                frames += 1;
                if frames > 1 {
                    return Ok(true);
                }
                let mut descriptor = [0u8; 9];
                r.read_exact(&mut descriptor)?;
                if descriptor[8] & 0x80 != 0 {
                    r.seek_relative(table_len(descriptor[8]))?;
                }
                byte(r)?; // LZW minimum code size
                skip_sub_blocks(r)?;
            }
            // The trailer, or anything unexpected.
            _ => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A GIF with `frames` 1×1 frames, built by hand.
    fn gif(frames: usize) -> Vec<u8> {
        let mut out = b"GIF89a".to_vec();
        out.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0]); // 1x1, global table of 2 colours
        out.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
        out.extend_from_slice(&[0x21, 0xFF, 3, b'N', b'E', b'T', 0]); // an application extension
        for _ in 0..frames {
            out.extend_from_slice(&[0x21, 0xF9, 4, 0, 10, 0, 0, 0]); // graphic control
            out.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
            out.extend_from_slice(&[2, 2, 0x4C, 0x01, 0]);
        }
        out.push(0x3B);
        out
    }

    #[test]
    fn gif_frames_are_counted_from_the_block_structure() {
        assert!(!gif_has_several_frames(Cursor::new(gif(1))).unwrap());
        assert!(gif_has_several_frames(Cursor::new(gif(2))).unwrap());
        assert!(gif_has_several_frames(Cursor::new(gif(30))).unwrap());
        // Truncated or foreign data is not animated, and is not an error either.
        let two = gif(2);
        assert!(!gif_has_several_frames(Cursor::new(&two[..20])).unwrap());
        assert!(!gif_has_several_frames(Cursor::new(b"PNG....".to_vec())).unwrap());
        assert!(!gif_has_several_frames(Cursor::new(Vec::new())).unwrap());
    }

    #[test]
    fn hand_built_gifs_decode() {
        // The fixture above is a real GIF: the decoder agrees.
        let image = image::load_from_memory(&gif(2)).unwrap();
        assert_eq!((image.width(), image.height()), (1, 1));
    }
}
