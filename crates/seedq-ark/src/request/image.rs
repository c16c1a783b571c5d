//! Input image checks: format from magic bytes, size, dimensions and aspect ratio.
//!
//! The same rules apply at enqueue (local files and `data:` URLs) and in the simulator
//! (`data:` URLs), so a job that passes here is not rejected for its images by Ark.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use base64::Engine;

/// Largest accepted image, exclusive (docs/ark-api.md §8: "< 30 MB").
pub const MAX_IMAGE_BYTES: usize = 30 * 1024 * 1024;
/// Largest request body, inclusive (docs/ark-api.md §8: "Whole request body ≤ 64 MB"). The
/// simulator refuses larger bodies with the same constant; seedq refuses them at submit, where
/// the user can still fix them, instead of paying a failed create later.
pub const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// Width and height must lie in this open interval, in pixels.
pub const SIDE_RANGE: (u32, u32) = (300, 6000);
/// Width / height must lie in this open interval.
pub const ASPECT_RANGE: (f64, f64) = (0.4, 2.5);

/// A recognised image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Lowercase format name as used in `data:image/<fmt>`.
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Why an image was refused; the caller adds the field name and model.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageProblem {
    TooLarge(usize),
    UnknownFormat,
    Unreadable,
    Side(u32, u32),
    Aspect(f64),
    BadDataUrl(String),
}

impl ImageProblem {
    /// (value, problem, allowed) for an [`super::Invalid`].
    pub fn describe(&self) -> (String, &'static str, String) {
        match self {
            ImageProblem::TooLarge(n) => (
                format!("of {n} bytes"),
                "is too large",
                format!("less than {MAX_IMAGE_BYTES} bytes (30 MB)"),
            ),
            ImageProblem::UnknownFormat => (
                "content".into(),
                "is not a supported image",
                "jpeg, png, webp, bmp, tiff or gif".into(),
            ),
            ImageProblem::Unreadable => (
                "content".into(),
                "could not be read",
                "a well-formed jpeg, png, webp, bmp, tiff or gif".into(),
            ),
            ImageProblem::Side(w, h) => (
                format!("{w}x{h}"),
                "has a side out of range",
                format!(
                    "width and height each between {} and {} pixels, exclusive",
                    SIDE_RANGE.0, SIDE_RANGE.1
                ),
            ),
            ImageProblem::Aspect(a) => (
                format!("with aspect ratio {a:.3}"),
                "is out of range",
                format!(
                    "width/height between {} and {}, exclusive",
                    ASPECT_RANGE.0, ASPECT_RANGE.1
                ),
            ),
            ImageProblem::BadDataUrl(why) => (
                "data URL".into(),
                "is malformed",
                format!("data:image/<lowercase format>;base64,<data> ({why})"),
            ),
        }
    }
}

/// Why an image file could not be loaded.
#[derive(Debug)]
pub enum ReadProblem {
    /// Not readable, or not a regular file; the message keeps the OS reason.
    Io(std::io::Error),
    /// Readable, but breaks an image rule (too large) before its bytes were read.
    Image(ImageProblem),
}

/// What a non-regular file is, for the error.
fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads an image file: a regular file only, and never more than [`MAX_IMAGE_BYTES`].
///
/// The type is checked before the file is opened: opening a FIFO blocks until a writer
/// comes (forever), and `/dev/zero` never ends. The size is checked from the metadata, and
/// the read itself is capped too, in case the file grows meanwhile.
///
/// # Errors
/// The file cannot be read, is not a regular file, or is too large.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ReadProblem> {
    let meta = std::fs::metadata(path).map_err(ReadProblem::Io)?;
    if meta.is_dir() {
        // Reading a directory gives the OS's own reason (EISDIR).
        let reason = std::fs::read(path).err().unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "Is a directory")
        });
        return Err(ReadProblem::Io(reason));
    }
    if !meta.is_file() {
        return Err(ReadProblem::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}, not a regular file; give an image file",
                file_kind(meta.file_type())
            ),
        )));
    }
    let too_large = |n: u64| ReadProblem::Image(ImageProblem::TooLarge(n as usize));
    if meta.len() >= MAX_IMAGE_BYTES as u64 {
        return Err(too_large(meta.len()));
    }
    let f = std::fs::File::open(path).map_err(ReadProblem::Io)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_IMAGE_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(ReadProblem::Io)?;
    if bytes.len() >= MAX_IMAGE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Checks a whole request body's size (embedded images included) against
/// [`MAX_REQUEST_BODY`].
///
/// # Errors
/// The body is larger.
pub fn check_body_size(len: usize, model: &str) -> Result<(), super::Invalid> {
    if len <= MAX_REQUEST_BODY {
        return Ok(());
    }
    Err(super::Invalid::new(
        "request body",
        format!("of {len} bytes"),
        "is too large",
        model,
        format!(
            "at most {MAX_REQUEST_BODY} bytes (64 MB) in all, embedded images included; \
             give large images as http(s) URLs or asset:// ids"
        ),
    ))
}

/// Detects the format from magic bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if starts(b"BM") {
        Some("bmp")
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Some("tiff")
    } else {
        None
    }
}

/// Checks an image's bytes against Ark's input rules.
///
/// # Errors
/// The first rule the image breaks.
pub fn check(bytes: &[u8]) -> Result<ImageInfo, ImageProblem> {
    if bytes.len() >= MAX_IMAGE_BYTES {
        return Err(ImageProblem::TooLarge(bytes.len()));
    }
    let format = sniff(bytes).ok_or(ImageProblem::UnknownFormat)?;
    let size = imagesize::blob_size(bytes).map_err(|_| ImageProblem::Unreadable)?;
    let (width, height) = (
        u32::try_from(size.width).unwrap_or(u32::MAX),
        u32::try_from(size.height).unwrap_or(u32::MAX),
    );
    let side_ok = |s: u32| s > SIDE_RANGE.0 && s < SIDE_RANGE.1;
    if !side_ok(width) || !side_ok(height) {
        return Err(ImageProblem::Side(width, height));
    }
    let aspect = f64::from(width) / f64::from(height);
    if aspect <= ASPECT_RANGE.0 || aspect >= ASPECT_RANGE.1 {
        return Err(ImageProblem::Aspect(aspect));
    }
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

/// Splits `data:image/<fmt>;base64,<data>` and decodes the payload.
///
/// # Errors
/// Not a base64 image data URL, an uppercase format (Ark requires lowercase), or bad base64.
pub fn decode_data_url(url: &str) -> Result<(String, Vec<u8>), ImageProblem> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| ImageProblem::BadDataUrl("no data: prefix".into()))?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| ImageProblem::BadDataUrl("no comma".into()))?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or_else(|| ImageProblem::BadDataUrl("not base64".into()))?;
    let fmt = mime
        .strip_prefix("image/")
        .ok_or_else(|| ImageProblem::BadDataUrl(format!("{mime} is not image/*")))?;
    if fmt.is_empty() || fmt.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ImageProblem::BadDataUrl(format!(
            "format {fmt:?} must be lowercase"
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ImageProblem::BadDataUrl(format!("bad base64: {e}")))?;
    Ok((fmt.to_string(), bytes))
}

/// Encodes checked image bytes as a data URL.
pub fn to_data_url(info: &ImageInfo, bytes: &[u8]) -> String {
    format!(
        "data:image/{};base64,{}",
        info.format,
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real PNG of the given size, written with the `png` crate.
    pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().expect("header");
            let data = vec![120u8; (width * height * 3) as usize];
            w.write_image_data(&data).expect("data");
        }
        out
    }

    /// A minimal baseline JPEG header (SOI + SOF0) carrying the size; enough for sniffing and
    /// size parsing, which is all the checks read.
    pub(crate) fn jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        v.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&[0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    #[test]
    fn accepts_a_real_png_and_jpeg() {
        let info = check(&png(640, 360)).expect("png ok");
        assert_eq!((info.format, info.width, info.height), ("png", 640, 360));
        let info = check(&jpeg(800, 600)).expect("jpeg ok");
        assert_eq!((info.format, info.width, info.height), ("jpeg", 800, 600));
    }

    #[test]
    fn rejects_small_sides_and_extreme_aspects() {
        assert_eq!(check(&png(300, 400)), Err(ImageProblem::Side(300, 400)));
        assert_eq!(
            check(&jpeg(6000, 3000)),
            Err(ImageProblem::Side(6000, 3000))
        );
        assert!(matches!(
            check(&png(1000, 400)),
            Err(ImageProblem::Aspect(_))
        ));
        assert!(matches!(
            check(&png(400, 1000)),
            Err(ImageProblem::Aspect(_))
        ));
        assert!(check(&png(999, 401)).is_ok());
    }

    #[test]
    fn rejects_unknown_formats() {
        assert_eq!(check(b"hello world"), Err(ImageProblem::UnknownFormat));
        assert_eq!(check(b"\x89PNG\r\n\x1a\n"), Err(ImageProblem::Unreadable));
    }

    #[test]
    fn request_bodies_are_capped_at_64_mb() {
        assert!(check_body_size(MAX_REQUEST_BODY, "m").is_ok());
        let e = check_body_size(MAX_REQUEST_BODY + 1, "m").expect_err("too large");
        let msg = e.to_string();
        assert!(
            msg.contains("request body of 67108865 bytes is too large for m")
                && msg.contains("at most 67108864 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn image_files_must_be_regular_and_small() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("a.png");
        std::fs::write(&ok, png(640, 360)).expect("write");
        assert_eq!(read_file(&ok).expect("reads"), png(640, 360));

        // /dev/zero would never end: refused before a byte is read.
        match read_file(Path::new("/dev/zero")) {
            Err(ReadProblem::Io(e)) => assert!(e.to_string().contains("character device"), "{e}"),
            other => panic!("/dev/zero: {other:?}"),
        }
        // A FIFO would block the open forever.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        match read_file(&fifo) {
            Err(ReadProblem::Io(e)) => assert!(e.to_string().contains("FIFO"), "{e}"),
            other => panic!("fifo: {other:?}"),
        }
        // A directory keeps the OS reason.
        match read_file(dir.path()) {
            Err(ReadProblem::Io(e)) => {
                assert!(e.to_string().contains("Is a directory"), "{e}")
            }
            other => panic!("dir: {other:?}"),
        }
        // Too large by its size, without reading it (a sparse file costs no disk).
        let big = dir.path().join("big.png");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_IMAGE_BYTES as u64 + 5).expect("set_len");
        assert!(matches!(
            read_file(&big),
            Err(ReadProblem::Image(ImageProblem::TooLarge(n))) if n == MAX_IMAGE_BYTES + 5
        ));
    }

    #[test]
    fn data_urls_round_trip_and_need_lowercase() {
        let bytes = png(640, 480);
        let info = check(&bytes).expect("ok");
        let url = to_data_url(&info, &bytes);
        let (fmt, back) = decode_data_url(&url).expect("decodes");
        assert_eq!(fmt, "png");
        assert_eq!(back, bytes);
        let upper = url.replacen("image/png", "image/PNG", 1);
        assert!(matches!(
            decode_data_url(&upper),
            Err(ImageProblem::BadDataUrl(_))
        ));
        assert!(decode_data_url("data:image/png,abc").is_err());
        assert!(decode_data_url("data:image/png;base64,@@@").is_err());
    }
}
