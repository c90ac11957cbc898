//! Headless Chromium (Debian's, installed by `cargo xtask setup`) for the HTML reports: a page's
//! console log and screenshot, and the pixels of a chart colour in it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Pixels of the screenshot `png` within 3 of `rgb` in each channel.
pub fn pixels_of(png: &Path, rgb: (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("screenshot in {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let close = |a: u8, b: u8| a.abs_diff(b) <= 3;
    buf[..info.buffer_size()]
        .chunks_exact(step)
        .filter(|p| close(p[0], rgb.0) && close(p[1], rgb.1) && close(p[2], rgb.2))
        .count()
}

/// `#rrggbb` as a triple.
pub fn rgb(hex: &str) -> (u8, u8, u8) {
    let n = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    ((n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// Opens `page` in headless Chromium: its log (stderr) and the screenshot's path.
pub fn screenshot(page: &Path) -> (String, PathBuf) {
    let png = page.with_extension("png");
    let log = chromium(
        page,
        &[
            "--no-first-run",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--enable-logging=stderr",
            "--v=1",
            "--window-size=1200,7000",
            &format!("--screenshot={}", png.display()),
        ],
    );
    assert!(png.is_file(), "no screenshot:\n{log}");
    (log, png)
}

/// `page` printed by headless Chromium (its print stylesheet, no header or footer): the PDF.
pub fn print_pdf(page: &Path) -> Vec<u8> {
    let pdf = page.with_extension("pdf");
    chromium(
        page,
        &[
            "--no-pdf-header-footer",
            &format!("--print-to-pdf={}", pdf.display()),
        ],
    );
    std::fs::read(&pdf).unwrap()
}

/// Runs headless Chromium on `page` with `args`, in a profile of its own; its log.
fn chromium(page: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(args)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (cargo xtask setup installs it)");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed:\n{log}");
    log
}
