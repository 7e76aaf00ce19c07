//! The layout file: output size and, per person, where the face goes (a COCO-17 pose or a bare
//! position) and which face photo it is.
//!
//! ```json
//! {"width": 896, "height": 1152, "people": [
//!   {"face": "alice.jpg", "keypoints": [[x, y, score], ... 17 entries]},
//!   {"face": "bob.jpg", "position": [x, y], "face_keypoints": [[x, y], ... 5 entries]},
//!   {"face": "team.jpg", "position": [x, y], "face_index": 2}
//! ]}
//! ```
//!
//! Faces bind to people in file order (the first face is the first person's). Each person has
//! exactly one of `keypoints` (a pose: the skeleton is drawn and the patch goes on the nose) and
//! `position` (pose-free: only the patch). `face` paths are relative to the layout file's folder.
//! `face_keypoints` optionally gives the five face points (left eye, right eye, nose, mouth left,
//! mouth right) in the face photo's pixels, skipping face detection. Without them, a photo that
//! is not an aligned 112x112 crop has its face detected ([`crate::detect::people`]): the largest,
//! or the one `face_index` names (0 = largest, as `idpatch faces` lists them).
//!
//! Coordinates are kept in single precision, as the reference's pose estimator produces them,
//! and are checked in that precision: `position` and `keypoints` lie within two image widths
//! (heights) of the image, i.e. x in [-2 * width, 3 * width] and y in [-2 * height, 3 * height]
//! (points outside the image are allowed, as a pose cut by the frame has them and its limbs may
//! still cross the image; one further out is a mistake such as the wrong units); a keypoint score is a finite number of magnitude at most
//! 1000 (confidences in [0, 1], COCO's 0/1/2 visibility flags and -1 for missing all fit);
//! `face_keypoints` are checked against the face photo once it is read
//! ([`crate::pipeline::face_batch`]), here only to be at most [`MAX_FACE_COORDINATE`].
//!
//! The file is read by serde (unknown fields are refused, `deny_unknown_fields`) and errors name
//! the field by its JSON path (`serde_path_to_error`): `layout people[1].keypoints[3]: ...`.

use std::path::{Path, PathBuf};

// The root re-export carries both the trait and the derive macro (`serde::de`'s is the trait
// alone).
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::{Error, Result};

/// Most people a layout may hold.
pub const MAX_PEOPLE: usize = 8;
/// Largest width or height accepted, in pixels.
pub const MAX_SIDE: u32 = 8192;
/// Largest magnitude of a `face_keypoints` coordinate: twice the longest side of a face photo.
pub const MAX_FACE_COORDINATE: f32 = 2.0 * crate::image_io::MAX_IMAGE_SIDE as f32;
/// Largest magnitude of a keypoint score.
pub const MAX_SCORE: f32 = 1000.0;
/// Largest layout file read, in bytes (a layout of 8 posed people is about 5 KB).
pub const MAX_LAYOUT_BYTES: u64 = 1 << 20;
/// COCO-17 keypoints per pose.
pub const COCO_KEYPOINTS: usize = 17;
/// Face points per face (left eye, right eye, nose, mouth left, mouth right).
pub const FACE_POINTS: usize = 5;
/// Largest `face_index` accepted.
pub const MAX_FACE_INDEX: u64 = 999;

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    pub people: Vec<Person>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Face photo, resolved against the layout file's folder; `None` when patches come from
    /// elsewhere.
    pub face: Option<PathBuf>,
    pub placement: Placement,
    pub face_keypoints: Option<[[f32; 2]; FACE_POINTS]>,
    /// Which detected face of the photo is this person's (0 = largest); `None`: the largest.
    pub face_index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// COCO-17 `[x, y, score]` in output pixels.
    Keypoints([[f32; 3]; COCO_KEYPOINTS]),
    /// Patch centre in output pixels, no skeleton.
    Position([f32; 2]),
}

impl Person {
    /// Where the person's ID patch is centred: `position`, or the nose (COCO keypoint 0).
    pub fn centre(&self) -> [f32; 2] {
        match &self.placement {
            Placement::Keypoints(k) => [k[0][0], k[0][1]],
            Placement::Position(p) => *p,
        }
    }

    pub fn keypoints(&self) -> Option<&[[f32; 3]; COCO_KEYPOINTS]> {
        match &self.placement {
            Placement::Keypoints(k) => Some(k),
            Placement::Position(_) => None,
        }
    }
}

impl Layout {
    /// Reads and validates a layout file. With `require_faces`, every person needs a `face`
    /// naming an existing file.
    pub fn load(path: &Path, require_faces: bool) -> Result<Layout> {
        let text = crate::fsutil::read_text_limited(path, MAX_LAYOUT_BYTES, "layout")?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse(&text, base, require_faces).map_err(|e| match e {
            Error::InvalidInput { input, reason } if input == "layout" => {
                Error::invalid_input(format!("layout {}", path.display()), reason)
            }
            other => other,
        })
    }

    /// Parses and validates layout JSON; `face` paths are resolved against `base_dir`. Errors
    /// name the field by its path (`layout people[1].keypoints[3]: ...`).
    pub fn parse(text: &str, base_dir: &Path, require_faces: bool) -> Result<Layout> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_input("layout", format!("not valid JSON: {e}")))?;
        let file: LayoutFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let reason = e.inner().to_string();
            let segments: Vec<_> = e.path().iter().collect();
            // An unknown field is a mistake of the object holding it: name that object, as
            // the message already names the field.
            let shown = if reason.starts_with("unknown field") {
                &segments[..segments.len().saturating_sub(1)]
            } else {
                &segments[..]
            };
            Error::invalid_input(field_path(shown), reason)
        })?;
        let (width, height) = (file.width.0, file.height.0);
        if file.people.is_empty() {
            return Err(Error::invalid_input(
                "layout people",
                "no people: at least 1 is needed",
            ));
        }
        if file.people.len() > MAX_PEOPLE {
            return Err(Error::invalid_input(
                "layout people",
                format!(
                    "{} people, at most {MAX_PEOPLE} are supported",
                    file.people.len()
                ),
            ));
        }
        let people = file
            .people
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.check(i, base_dir, require_faces, [width, height]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Layout {
            width,
            height,
            people,
        })
    }

    /// The face photo paths, each named as in errors (`layout people[i].face`), for checking
    /// that no output overwrites one.
    pub fn face_inputs(&self) -> Vec<(String, &Path)> {
        self.people
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((format!("layout people[{i}].face"), p.face.as_deref()?)))
            .collect()
    }

    /// True when no person has a pose (the skeleton image is black).
    pub fn is_pose_free(&self) -> bool {
        self.people.iter().all(|p| p.keypoints().is_none())
    }
}

/// `layout` followed by a serde path as `serde_path_to_error` writes it (`people[1].keypoints`).
fn field_path(segments: &[&serde_path_to_error::Segment]) -> String {
    let mut out = String::from("layout");
    for (i, segment) in segments.iter().enumerate() {
        let separator = match (i, segment) {
            (_, serde_path_to_error::Segment::Seq { .. }) => "",
            (0, _) => " ",
            _ => ".",
        };
        out.push_str(separator);
        out.push_str(&segment.to_string());
    }
    out
}

/// The file as written: field names, types and shapes (serde), before the checks that span
/// fields (placement, bounds against the image size, face files).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    width: Side,
    height: Side,
    people: Vec<PersonFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonFile {
    #[serde(default)]
    face: Option<FacePath>,
    #[serde(default)]
    keypoints: Option<Points<3, COCO_KEYPOINTS>>,
    #[serde(default)]
    position: Option<Point<2>>,
    #[serde(default)]
    face_keypoints: Option<Points<2, FACE_POINTS>>,
    #[serde(default)]
    face_index: Option<FaceIndex>,
}

impl PersonFile {
    /// Exactly one placement, coordinates within bounds, and with `require_faces` a face photo
    /// that exists.
    fn check(
        self,
        index: usize,
        base_dir: &Path,
        require_faces: bool,
        size: [u32; 2],
    ) -> Result<Person> {
        let name = format!("layout people[{index}]");
        let face = self.face.map(|f| base_dir.join(f.0));
        if require_faces {
            match &face {
                None => {
                    return Err(Error::invalid_input(
                        format!("{name}.face"),
                        "missing: every person needs a face photo",
                    ))
                }
                Some(path) => {
                    if let Some(problem) = crate::fsutil::regular_file_problem(path) {
                        return Err(Error::invalid_input(
                            format!("{name}.face"),
                            format!("{} {problem}", path.display()),
                        ));
                    }
                }
            }
        }
        let placement = match (self.keypoints, self.position) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_input(
                    &name,
                    "has both `keypoints` and `position`: give exactly one",
                ))
            }
            (None, None) => {
                return Err(Error::invalid_input(
                    &name,
                    "has neither `keypoints` nor `position`: give exactly one",
                ))
            }
            (Some(k), None) => {
                let bounds = Bounds::image(size).with_score();
                Placement::Keypoints(k.within(&format!("{name}.keypoints"), &bounds)?)
            }
            (None, Some(p)) => {
                let bounds = Bounds::image(size);
                Placement::Position(p.within(&format!("{name}.position"), &bounds)?)
            }
        };
        let face_keypoints = self
            .face_keypoints
            .map(|k| k.within(&format!("{name}.face_keypoints"), &Bounds::face()))
            .transpose()?;
        let face_index = self.face_index.map(|i| i.0);
        if face_index.is_some() && face_keypoints.is_some() {
            return Err(Error::invalid_input(
                &name,
                "has both `face_keypoints` and `face_index`: the keypoints skip detection, so give one",
            ));
        }
        Ok(Person {
            face,
            placement,
            face_keypoints,
            face_index,
        })
    }
}

/// A width or height: a positive multiple of 8, at most [`MAX_SIDE`].
struct Side(u32);

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let n = value.as_u64().ok_or_else(|| {
            de::Error::custom(format!("expected a positive integer, got {value}"))
        })?;
        if n == 0 || n % 8 != 0 {
            return Err(de::Error::custom(format!(
                "{n} is not a positive multiple of 8"
            )));
        }
        if n > u64::from(MAX_SIDE) {
            return Err(de::Error::custom(format!(
                "{n} exceeds the maximum of {MAX_SIDE}"
            )));
        }
        Ok(Side(n as u32))
    }
}

/// A face photo path as written: a non-empty string.
struct FacePath(String);

impl<'de> Deserialize<'de> for FacePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) if !s.is_empty() => Ok(FacePath(s)),
            other => Err(de::Error::custom(format!(
                "expected a file path, got {other}"
            ))),
        }
    }
}

/// How a point of `N` numbers is written, for messages.
fn point_form(n: usize) -> &'static str {
    if n == 3 {
        "[x, y, score]"
    } else {
        "[x, y]"
    }
}

/// One point, `N` numbers, as read (f64; checked as f32 against the image in [`Point::within`]).
struct Point<const N: usize>([f64; N]);

impl<'de, const N: usize> Deserialize<'de> for Point<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Numbers<const N: usize>;
        impl<'de, const N: usize> de::Visitor<'de> for Numbers<N> {
            type Value = Point<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(point_form(N))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Point<N>, A::Error> {
                let mut out = [0f64; N];
                let mut count = 0;
                while let Some(item) = seq.next_element::<serde_json::Value>()? {
                    let v = item.as_f64().ok_or_else(|| {
                        de::Error::custom(format!("expected numbers, got {item}"))
                    })?;
                    if let Some(slot) = out.get_mut(count) {
                        *slot = v;
                    }
                    count += 1;
                }
                if count != N {
                    return Err(de::Error::custom(format!(
                        "expected {} ({N} numbers), got {count} entries",
                        point_form(N)
                    )));
                }
                Ok(Point(out))
            }
        }
        deserializer.deserialize_seq(Numbers::<N>)
    }
}

impl<const N: usize> Point<N> {
    /// The point in f32, each number within `bounds`; `name` is how errors call it.
    fn within(&self, name: &str, bounds: &Bounds) -> Result<[f32; N]> {
        let mut out = [0f32; N];
        for (i, (slot, &v)) in out.iter_mut().zip(&self.0).enumerate() {
            // Checked as the f32 it is used as: 1e39 is a finite f64 but an infinite f32.
            let v32 = v as f32;
            let (lo, hi) = bounds.ranges[i];
            if !v32.is_finite() || v32 < lo || v32 > hi {
                return Err(Error::invalid_input(
                    name,
                    format!(
                        "value {} is out of range [{lo}, {hi}] ({})",
                        crate::error::shown(v),
                        bounds.what[i]
                    ),
                ));
            }
            *slot = v32;
        }
        Ok(out)
    }
}

/// Exactly `COUNT` points of `N` numbers.
struct Points<const N: usize, const COUNT: usize>(Vec<Point<N>>);

impl<'de, const N: usize, const COUNT: usize> Deserialize<'de> for Points<N, COUNT> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Rows<const N: usize, const COUNT: usize>;
        impl<'de, const N: usize, const COUNT: usize> de::Visitor<'de> for Rows<N, COUNT> {
            type Value = Points<N, COUNT>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "an array of {COUNT} {}", point_form(N))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut rows = Vec::with_capacity(COUNT);
                while rows.len() < COUNT {
                    match seq.next_element::<Point<N>>()? {
                        Some(row) => rows.push(row),
                        None => break,
                    }
                }
                // Count, without keeping, any rows past the expected number.
                let mut count = rows.len();
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                if count != COUNT {
                    return Err(de::Error::custom(format!(
                        "expected {COUNT} entries, got {count}"
                    )));
                }
                Ok(Points(rows))
            }
        }
        deserializer.deserialize_seq(Rows::<N, COUNT>)
    }
}

impl<const N: usize, const COUNT: usize> Points<N, COUNT> {
    /// Every point checked by [`Point::within`], named `name[i]`.
    fn within(&self, name: &str, bounds: &Bounds) -> Result<[[f32; N]; COUNT]> {
        let rows = self
            .0
            .iter()
            .enumerate()
            .map(|(i, p)| p.within(&format!("{name}[{i}]"), bounds))
            .collect::<Result<Vec<_>>>()?;
        Ok(rows.try_into().expect("COUNT rows were read"))
    }
}

/// A `face_index`: a whole number from 0 to [`MAX_FACE_INDEX`].
struct FaceIndex(usize);

impl<'de> Deserialize<'de> for FaceIndex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match value.as_u64() {
            Some(n) if n <= MAX_FACE_INDEX => Ok(FaceIndex(n as usize)),
            _ => Err(de::Error::custom(format!(
                "expected a whole number from 0 to {MAX_FACE_INDEX}, got {value}"
            ))),
        }
    }
}

/// The closed range each number of a point may take: x, y, and the score when there is one.
struct Bounds {
    ranges: [(f32, f32); 3],
    what: [&'static str; 3],
}

impl Bounds {
    /// Output-image coordinates: within two image sizes of the image.
    fn image([width, height]: [u32; 2]) -> Bounds {
        let (w, h) = (width as f32, height as f32);
        Bounds {
            ranges: [(-2.0 * w, 3.0 * w), (-2.0 * h, 3.0 * h), (0.0, 0.0)],
            what: [
                "x must be within two image widths of the image",
                "y must be within two image heights of the image",
                "",
            ],
        }
    }

    /// Face photo coordinates, before the photo's size is known.
    fn face() -> Bounds {
        let m = MAX_FACE_COORDINATE;
        let what = "face photo coordinates are at most twice the longest photo side";
        Bounds {
            ranges: [(-m, m), (-m, m), (0.0, 0.0)],
            what: [what, what, ""],
        }
    }

    fn with_score(mut self) -> Bounds {
        self.ranges[2] = (-MAX_SCORE, MAX_SCORE);
        self.what[2] = "a score is at most 1000 in magnitude";
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person_with(field: &str) -> String {
        format!(r#"{{"width": 64, "height": 64, "people": [{{"position": [1, 2]}}, {{{field}}}]}}"#)
    }

    fn error_of(text: &str) -> String {
        Layout::parse(text, Path::new("/base"), false)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_both_placements_and_resolves_faces() {
        let kps = vec!["[1.5, 2.5, 0.9]"; 17].join(", ");
        let text = format!(
            r#"{{"width": 64, "height": 128, "people": [
                {{"face": "a.jpg", "keypoints": [{kps}]}},
                {{"face": "sub/b.png", "position": [10, 20.25],
                  "face_keypoints": [[1,2],[3,4],[5,6],[7,8],[9,10]]}},
                {{"face": "c.jpg", "position": [5, 6], "face_index": 3}}]}}"#
        );
        let layout = Layout::parse(&text, Path::new("/base"), false).unwrap();
        assert_eq!((layout.width, layout.height), (64, 128));
        assert_eq!(
            layout.people[0].face.as_deref(),
            Some(Path::new("/base/a.jpg"))
        );
        assert_eq!(layout.people[0].centre(), [1.5, 2.5]);
        assert_eq!(layout.people[1].centre(), [10.0, 20.25]);
        assert_eq!(layout.people[1].face_keypoints.unwrap()[4], [9.0, 10.0]);
        assert_eq!(layout.people[1].face_index, None);
        assert_eq!(layout.people[2].face_index, Some(3));
        assert!(!layout.is_pose_free());
    }

    #[test]
    fn errors_name_the_person_and_field() {
        let short = vec!["[0, 0, 1]"; 16].join(", ");
        let cases = [
            (
                person_with(&format!(r#""keypoints": [{short}]"#)),
                "layout people[1].keypoints: expected 17 entries, got 16",
            ),
            (
                person_with(&format!(
                    r#""position": [1, 2], "keypoints": [[0, 0, 1], {short}]"#
                )),
                "layout people[1]: has both",
            ),
            (
                person_with(r#""face": "x.jpg""#),
                "layout people[1]: has neither",
            ),
            (
                person_with(r#""position": [1, 2], "colour": 3"#),
                "layout people[1]: unknown field `colour`",
            ),
            (
                person_with(r#""position": [1]"#),
                "layout people[1].position: expected [x, y] (2 numbers), got 1",
            ),
            (
                person_with(r#""position": [1, 1e9]"#),
                "layout people[1].position: value 1000000000 is out of range [-128, 192] (y must",
            ),
            (
                person_with(r#""position": [-129, 2]"#),
                "layout people[1].position: value -129 is out of range [-128, 192] (x must",
            ),
            (
                // Finite as f64, infinite as the f32 it is used as.
                person_with(
                    r#""position": [1, 2], "face_keypoints": [[1e39, 2], [3, 4], [5, 6], [7, 8], [9, 10]]"#,
                ),
                "layout people[1].face_keypoints[0]: value 1e39 is out of range",
            ),
            (
                person_with(&format!(
                    r#""keypoints": [[1, 2, 1e300], {}]"#,
                    vec!["[0, 0, 1]"; 16].join(", ")
                )),
                "layout people[1].keypoints[0]: value 1e300 is out of range [-1000, 1000] (a score",
            ),
            (
                person_with(r#""position": [1, 2], "face_keypoints": [[1, 2]]"#),
                "layout people[1].face_keypoints: expected 5 entries, got 1",
            ),
            (
                person_with(r#""position": [1, 2], "face": 3"#),
                "layout people[1].face: expected a file path",
            ),
            (
                person_with(r#""position": [1, 2], "face_index": -1"#),
                "layout people[1].face_index: expected a whole number from 0 to 999, got -1",
            ),
            (
                person_with(r#""position": [1, 2], "face_index": 1.5"#),
                "layout people[1].face_index: expected a whole number",
            ),
            (
                person_with(
                    r#""position": [1, 2], "face_index": 0, "face_keypoints": [[1,2],[3,4],[5,6],[7,8],[9,10]]"#,
                ),
                "layout people[1]: has both `face_keypoints` and `face_index`",
            ),
            (
                r#"{"width": 60, "height": 64, "people": [{"position": [1, 2]}]}"#.into(),
                "layout width: 60 is not a positive multiple of 8",
            ),
            (
                r#"{"width": 64, "height": 0, "people": [{"position": [1, 2]}]}"#.into(),
                "layout height: 0 is not a positive multiple of 8",
            ),
            (
                r#"{"width": 64, "height": 64, "people": []}"#.into(),
                "layout people: no people",
            ),
            (
                r#"{"width": 64, "height": 64, "people": [], "seed": 1}"#.into(),
                "layout: unknown field `seed`",
            ),
        ];
        for (text, expected) in cases {
            let err = error_of(&text);
            assert!(err.starts_with(expected), "got {err:?}, want {expected:?}");
        }
        let nine = [r#"{"position": [1, 2]}"#; 9].join(", ");
        let err = error_of(&format!(
            r#"{{"width": 64, "height": 64, "people": [{nine}]}}"#
        ));
        assert_eq!(err, "layout people: 9 people, at most 8 are supported");
    }

    #[test]
    fn faces_are_required_when_asked() {
        let text = r#"{"width": 64, "height": 64, "people": [{"position": [1, 2]}]}"#;
        assert!(Layout::parse(text, Path::new("."), false).is_ok());
        let err = Layout::parse(text, Path::new("."), true)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("layout people[0].face: missing"), "{err}");
        let text =
            r#"{"width": 64, "height": 64, "people": [{"position": [1, 2], "face": "nope.jpg"}]}"#;
        let err = Layout::parse(text, Path::new("/no/such/dir"), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("layout people[0].face: /no/such/dir/nope.jpg does not exist"),
            "{err}"
        );
    }
}
