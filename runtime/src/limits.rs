//! Ranges of the numbers and sizes a user gives one generation, checked before any graph runs
//! and in the precision they are used in: f32 for everything that reaches a graph or the
//! scheduler, so `--guidance 1e39` (a finite f64, an infinite f32) is an input error, not a NaN
//! found in a graph's output. [`crate::pipeline::Params::check`] and
//! [`crate::pipeline::prepare`] call these; layout fields are checked by [`crate::layout`],
//! images by [`crate::image_io`].

use crate::error::shown;
use crate::image_io::Rgb8;
use crate::{Error, Result, Tensor};

/// Largest guidance scale accepted. Useful values are 1 to about 15 (the reference uses 5.5);
/// far larger ones only saturate the image.
pub const MAX_GUIDANCE: f32 = 100.0;
/// Largest ControlNet conditioning scale accepted (useful values are 0 to about 2; the
/// reference uses 0.8).
pub const MAX_CONTROLNET_SCALE: f32 = 10.0;
/// Largest magnitude accepted in `--init-noise`: the values are standard normal samples (one
/// beyond 10 has a probability of 1.5e-23), so a larger one means the file holds something else.
pub const MAX_INIT_NOISE: f32 = 100.0;
/// Longest prompt or negative prompt accepted, in bytes. CLIP reads 77 tokens (a few hundred
/// characters) and the rest is cut with a warning; the prompt is also stored in the PNG.
pub const MAX_PROMPT_BYTES: usize = 10_000;

/// `value`, as the f32 it is used as, is finite and in [0, `max`]. `flag` names it in errors.
pub fn check_scale(flag: &str, value: f64, max: f32) -> Result<()> {
    let used = value as f32;
    if !used.is_finite() || !(0.0..=max).contains(&used) {
        return Err(Error::invalid_input(
            flag,
            format!("{} is not a number between 0 and {max}", shown(value)),
        ));
    }
    Ok(())
}

/// `prompt` is at most [`MAX_PROMPT_BYTES`] long.
pub fn check_prompt(flag: &str, prompt: &str) -> Result<()> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::invalid_input(
            flag,
            format!(
                "{} bytes long, at most {MAX_PROMPT_BYTES} are accepted (CLIP reads only the \
                 first 77 tokens)",
                prompt.len()
            ),
        ));
    }
    Ok(())
}

/// Initial noise (float32) holds finite values of magnitude at most [`MAX_INIT_NOISE`]; the
/// error names the first value that does not.
pub fn check_init_noise(noise: &Tensor, name: &str) -> Result<()> {
    let values = noise.as_f32().ok_or_else(|| {
        Error::invalid_input(name, format!("expected float32, got {}", noise.dtype()))
    })?;
    match values
        .iter()
        .position(|x| !x.is_finite() || x.abs() > MAX_INIT_NOISE)
    {
        Some(i) => Err(Error::invalid_input(
            name,
            format!(
                "value {} at flat index {i} is not standard normal noise (finite, magnitude at \
                 most {MAX_INIT_NOISE})",
                shown(values[i])
            ),
        )),
        None => Ok(()),
    }
}

/// Face points (of `layout people[person]`) lie within two photo widths (heights) of the photo,
/// as layout positions lie within two image sizes of the image: further out they are in the
/// wrong units or meant for another photo.
pub fn check_face_points(points: &[[f64; 2]; 5], img: &Rgb8, person: usize) -> Result<()> {
    let (w, h) = (img.width() as f64, img.height() as f64);
    for (k, [x, y]) in points.iter().enumerate() {
        if !(-2.0 * w..=3.0 * w).contains(x) || !(-2.0 * h..=3.0 * h).contains(y) {
            return Err(Error::invalid_input(
                format!("layout people[{person}].face_keypoints[{k}]"),
                format!(
                    "({x}, {y}) is far outside the {}x{} face photo (points must lie within two \
                     photo widths and heights of it)",
                    img.width(),
                    img.height()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Params;

    #[test]
    fn scales_are_checked_as_f32_with_ranges() {
        let ok = Params::default();
        let cases = [
            // Finite as f64, infinite as the f32 the graphs get.
            (
                Params {
                    guidance: 1e39,
                    ..ok.clone()
                },
                "--guidance: 1e39 is not a number between 0 and 100",
            ),
            (
                Params {
                    controlnet_scale: 1e39,
                    ..ok.clone()
                },
                "--controlnet-scale: 1e39 is not a number between 0 and 10",
            ),
            (
                Params {
                    guidance: 100.5,
                    ..ok.clone()
                },
                "--guidance: 100.5 is not",
            ),
            (
                Params {
                    controlnet_scale: -0.5,
                    ..ok.clone()
                },
                "--controlnet-scale: -0.5 is not a number between 0 and 10",
            ),
            (
                Params {
                    negative_prompt: "x".repeat(MAX_PROMPT_BYTES + 1),
                    ..ok.clone()
                },
                "--negative-prompt: 10001 bytes long",
            ),
        ];
        for (params, expected) in cases {
            let err = params.check().unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        let edges = Params {
            guidance: 100.0,
            controlnet_scale: 10.0,
            prompt: "x".repeat(MAX_PROMPT_BYTES),
            ..ok
        };
        assert!(edges.check().is_ok());
    }

    #[test]
    fn init_noise_is_standard_normal_sized() {
        let noise = |v: f32| Tensor::from_f32(vec![1, 4], vec![0.5, -3.0, v, 1.0]).unwrap();
        assert!(check_init_noise(&noise(-100.0), "--init-noise").is_ok());
        for (v, shown) in [(100.5, "100.5"), (3e38, "3e38"), (f32::NAN, "NaN")] {
            let err = check_init_noise(&noise(v), "--init-noise")
                .unwrap_err()
                .to_string();
            let expected = format!("--init-noise: value {shown} at flat index 2 is not");
            assert!(err.starts_with(&expected), "{err}");
        }
    }

    #[test]
    fn face_points_stay_near_the_photo() {
        let img = Rgb8::zeros(100, 50);
        let mut points = [[10.0, 10.0]; 5];
        points[4] = [300.0, 150.0];
        assert!(check_face_points(&points, &img, 0).is_ok());
        points[4] = [300.0, 150.5];
        let err = check_face_points(&points, &img, 3).unwrap_err().to_string();
        assert!(
            err.starts_with("layout people[3].face_keypoints[4]: (300, 150.5) is far outside"),
            "{err}"
        );
    }
}
