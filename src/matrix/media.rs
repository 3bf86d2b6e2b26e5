//! The content repository's rules: which media IDs are valid, which content types may be
//! served inline, the thumbnail sizes the spec recommends and how a request maps onto them,
//! and the dimensions a thumbnail gets. Pure functions of their inputs.

use ruma::http_headers::{ContentDisposition, ContentDispositionType};

/// Longest media ID accepted in a path. Ours are 24 characters; the spec sets no bound, but a
/// key in storage should not be arbitrarily long.
const MAX_MEDIA_ID_LEN: usize = 255;

/// Whether `id` may be a media ID: the spec allows only `A-Za-z0-9`, `_` and `-`, which also
/// rules out any path traversal.
pub fn is_valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MEDIA_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The bare media type of a `Content-Type` value: lower-case, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The `Content-Disposition` of a download: `inline` only for the types the spec lists as
/// safe to render ("Serving inline content"), `attachment` for everything else, with the
/// uploader's (or the request's) file name. ruma's type writes the name per RFC 6266, with
/// RFC 8187 encoding for non-ASCII names.
pub fn download_disposition(content_type: &str, filename: Option<&str>) -> ContentDisposition {
    let kind = if ruma::api::client::media::is_safe_inline_content_type(&essence(content_type)) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    ContentDisposition::new(kind).with_filename(filename.map(str::to_owned))
}

/// How a thumbnail fits its box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMethod {
    /// Fill the box exactly (the aspect of the request), cutting the overhang.
    Crop,
    /// Fit inside the box, keeping the original's aspect.
    Scale,
}

impl ResizeMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// A thumbnail box: a size and a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThumbnailBox {
    pub width: u32,
    pub height: u32,
    pub method: ResizeMethod,
}

const fn preset(width: u32, height: u32, method: ResizeMethod) -> ThumbnailBox {
    ThumbnailBox { width, height, method }
}

/// The sizes the spec says servers should produce. These are the ones stored once made.
pub const RECOMMENDED_SIZES: [ThumbnailBox; 5] = [
    preset(32, 32, ResizeMethod::Crop),
    preset(96, 96, ResizeMethod::Crop),
    preset(320, 240, ResizeMethod::Scale),
    preset(640, 480, ResizeMethod::Scale),
    preset(800, 600, ResizeMethod::Scale),
];

/// The box to make for a request: the smallest recommended size of the requested method that
/// is at least as large as the request in both dimensions (the spec: never smaller than asked,
/// unless the original is), as Synapse picks among its configured sizes. A request larger than
/// every preset gets a box of exactly its own size, which is made but not stored, so arbitrary
/// sizes cannot fill the disk.
pub fn thumbnail_box(width: u32, height: u32, method: ResizeMethod) -> (ThumbnailBox, bool) {
    let preset = RECOMMENDED_SIZES
        .iter()
        .filter(|p| p.method == method && p.width >= width && p.height >= height)
        .min_by_key(|p| u64::from(p.width) * u64::from(p.height));
    match preset {
        Some(p) => (*p, true),
        None => (ThumbnailBox { width, height, method }, false),
    }
}

/// Whether the original should be served instead of a thumbnail: the spec says to return the
/// original when it is no larger than the requested dimensions, and never to upscale.
pub fn original_fits(width: u32, height: u32, target: ThumbnailBox) -> bool {
    width <= target.width && height <= target.height
}

/// The part of a `width × height` image a thumbnail is made from, as `(x, y, w, h)`, and the
/// thumbnail's size. `Scale` uses the whole image and fits it in the box; `Crop` cuts the
/// largest centred rectangle of the box's aspect and shrinks it to the box, or, when the image
/// is smaller than the box in some dimension, to the largest size of that aspect it holds.
/// Never larger than the original; every dimension at least 1.
pub fn thumbnail_geometry(
    width: u32,
    height: u32,
    target: ThumbnailBox,
) -> ((u32, u32, u32, u32), (u32, u32)) {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let (tw, th) = (f64::from(target.width.max(1)), f64::from(target.height.max(1)));
    let dim = |v: f64, max: u32| (v.round() as u32).clamp(1, max.max(1));
    match target.method {
        ResizeMethod::Scale => {
            let factor = (tw / w).min(th / h).min(1.0);
            ((0, 0, width, height), (dim(w * factor, width), dim(h * factor, height)))
        }
        ResizeMethod::Crop => {
            // The largest rectangle of the box's aspect inside the image.
            let aspect = tw / th;
            let (cw, ch) = if w / h > aspect { (h * aspect, h) } else { (w, w / aspect) };
            let (cw, ch) = (dim(cw, width), dim(ch, height));
            let (x, y) = ((width - cw) / 2, (height - ch) / 2);
            let factor = (tw / f64::from(cw)).min(th / f64::from(ch)).min(1.0);
            ((x, y, cw, ch), (dim(f64::from(cw) * factor, cw), dim(f64::from(ch) * factor, ch)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_allow_only_the_spec_alphabet() {
        for ok in ["abc", "A-b_9", &"x".repeat(255)] {
            assert!(is_valid_media_id(ok), "{ok}");
        }
        for bad in ["", "../etc", "a/b", "a.b", "a%2F", "é", &"x".repeat(256)] {
            assert!(!is_valid_media_id(bad), "{bad}");
        }
    }

    #[test]
    fn only_safe_types_are_inline() {
        let check = |ct: &str, name: Option<&str>, expected: &str| {
            assert_eq!(download_disposition(ct, name).to_string(), expected, "{ct}");
        };
        check("image/png", None, "inline");
        check("Image/PNG; charset=x", Some("a.png"), "inline; filename=a.png");
        check("text/plain; charset=utf-8", Some("notes.txt"), "inline; filename=notes.txt");
        check("text/html", Some("page.html"), "attachment; filename=page.html");
        check("image/svg+xml", None, "attachment");
        check("application/octet-stream", Some("a b\".bin"), "attachment; filename=\"a b\\\".bin\"");
        // Non-ASCII names use RFC 8187's encoding.
        check("application/pdf", Some("résumé.pdf"), "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf");
    }

    #[test]
    fn requests_map_to_the_smallest_covering_preset() {
        let crop = ResizeMethod::Crop;
        let scale = ResizeMethod::Scale;
        let check = |w, h, m, expected: (u32, u32, bool)| {
            let (b, stored) = thumbnail_box(w, h, m);
            assert_eq!((b.width, b.height, stored), expected, "{w}x{h} {m:?}");
            assert_eq!(b.method, m);
        };
        check(1, 1, crop, (32, 32, true));
        check(32, 32, crop, (32, 32, true));
        check(33, 10, crop, (96, 96, true));
        check(96, 96, crop, (96, 96, true));
        check(97, 97, crop, (97, 97, false));
        check(100, 100, scale, (320, 240, true));
        check(320, 241, scale, (640, 480, true));
        check(800, 600, scale, (800, 600, true));
        check(801, 600, scale, (801, 600, false));
    }

    #[test]
    fn geometry_never_upscales_and_keeps_aspects() {
        let b = |width, height, method| ThumbnailBox { width, height, method };
        let (crop, scale) = (ResizeMethod::Crop, ResizeMethod::Scale);
        // 4:3 photo scaled into 320x240 exactly; a panorama fits by width.
        assert_eq!(thumbnail_geometry(4000, 3000, b(320, 240, scale)), ((0, 0, 4000, 3000), (320, 240)));
        assert_eq!(thumbnail_geometry(1000, 100, b(320, 240, scale)), ((0, 0, 1000, 100), (320, 32)));
        // Smaller than the box: unchanged.
        assert_eq!(thumbnail_geometry(100, 50, b(320, 240, scale)), ((0, 0, 100, 50), (100, 50)));
        // Crop takes the centred square of a landscape image.
        assert_eq!(thumbnail_geometry(400, 200, b(96, 96, crop)), ((100, 0, 200, 200), (96, 96)));
        assert_eq!(thumbnail_geometry(200, 400, b(32, 32, crop)), ((0, 100, 200, 200), (32, 32)));
        // Narrower than the box: the largest square it holds, not enlarged.
        assert_eq!(thumbnail_geometry(50, 200, b(96, 96, crop)), ((0, 75, 50, 50), (50, 50)));
        // Degenerate sizes stay at least one pixel.
        assert_eq!(thumbnail_geometry(10000, 1, b(32, 32, crop)).1, (1, 1));
        assert_eq!(thumbnail_geometry(10000, 1, b(320, 240, scale)).1, (320, 1));
    }

    #[test]
    fn small_originals_are_served_as_they_are() {
        let target = ThumbnailBox { width: 96, height: 96, method: ResizeMethod::Crop };
        assert!(original_fits(96, 50, target));
        assert!(!original_fits(97, 50, target));
    }
}
