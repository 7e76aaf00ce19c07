//! Graph-set manifests (`models/<set>/manifest.json`, format described in models/README.md):
//! which graph plays which role, its files and checksums, and the IO spec every backend checks
//! the loaded graph against.
//!
//! [`ModelSet::open`] checks a set before anything runs: paths stay inside the set, config and
//! scheduler values are bounded, and every listed file (graphs, external data, tokenizer files)
//! matches its sha256, through the [`ChecksumCache`] so that unchanged files are not re-read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod paths;

pub use crate::checksum::sha256_file;
use crate::checksum::{is_sha256, sha256_hex, ChecksumCache};
use crate::scheduler::SchedulerConfig;
use crate::tensor::DType;
use crate::{Error, Result};
pub use paths::PRECISIONS;
use paths::{check_base, check_precision, check_set_path};

pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest `manifest.json` read, in bytes (a full set's is about 30 KB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Format 3 lists one `tokenizer.json` per tokenizer (`file`, `sha256`); format 2 listed CLIP's
/// `vocab.json` and `merges.txt` with a pad id, and is refused.
pub const FORMAT_VERSION: u32 = 3;

/// The graphs of an ID-Patch set, in pipeline order, then the face detector's three networks
/// (MTCNN's P-Net, R-Net and O-Net, see [`crate::detect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    TextEncoder,
    TextEncoder2,
    Arcface,
    PatchProj,
    PromptProj,
    Controlnet,
    Unet,
    VaeDecoder,
    FaceDetectorPnet,
    FaceDetectorRnet,
    FaceDetectorOnet,
}

impl Role {
    pub const ALL: [Role; 11] = [
        Role::TextEncoder,
        Role::TextEncoder2,
        Role::Arcface,
        Role::PatchProj,
        Role::PromptProj,
        Role::Controlnet,
        Role::Unet,
        Role::VaeDecoder,
        Role::FaceDetectorPnet,
        Role::FaceDetectorRnet,
        Role::FaceDetectorOnet,
    ];

    /// The longest [`Role::name`], for table columns that line up.
    pub fn name_width() -> usize {
        Role::ALL.iter().map(|r| r.name().len()).max().unwrap_or(0)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::TextEncoder => "text_encoder",
            Role::TextEncoder2 => "text_encoder_2",
            Role::Arcface => "arcface",
            Role::PatchProj => "patch_proj",
            Role::PromptProj => "prompt_proj",
            Role::Controlnet => "controlnet",
            Role::Unet => "unet",
            Role::VaeDecoder => "vae_decoder",
            Role::FaceDetectorPnet => "face_detector_pnet",
            Role::FaceDetectorRnet => "face_detector_rnet",
            Role::FaceDetectorOnet => "face_detector_onet",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The roles a user listed (e.g. with `--graphs`), every role when the list is empty.
    pub fn parse_list(names: &[String], input: &str) -> Result<Vec<Role>> {
        if names.is_empty() {
            return Ok(Role::ALL.to_vec());
        }
        names
            .iter()
            .map(|n| {
                Role::from_name(n)
                    .ok_or_else(|| Error::invalid_input(input, format!("unknown graph {n:?}")))
            })
            .collect()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a tensor spec: a fixed size or a named dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbol(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }

    /// Whether a concrete shape fits this spec (rank and fixed dims).
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(d, &n)| match d {
                Dim::Fixed(f) => *f == n,
                Dim::Symbol(_) => true,
            })
    }
}

/// A file of the set (relative to its directory) and the sha256 of its bytes (64 hex digits).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphEntry {
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub external_data: Vec<FileEntry>,
    pub precision: String,
    pub opset: u32,
    #[serde(default)]
    pub parameters: Option<u64>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Directory (relative to the set) of golden `input.<name>.npy` / `output.<name>.npy`.
    #[serde(default)]
    pub golden: Option<String>,
    /// Fused ONNX Runtime operators in an optimised graph, by op type.
    #[serde(default)]
    pub fused_ops: Option<BTreeMap<String, u64>>,
    /// How an INT8 graph was quantized (the report calibration/quantize.py writes).
    #[serde(default)]
    pub quantization: Option<Quantization>,
}

/// The part of an INT8 graph's quantization report the runtime reads; the rest (method,
/// calibration records, held-out errors, ...) is for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quantization {
    /// `"int8 per-tensor symmetric"` (S8S8, what TensorRT takes) or `"uint8 per-tensor
    /// symmetric"` (U8S8, for ONNX Runtime's x86 CPU kernels).
    #[serde(default)]
    pub activations: Option<String>,
}

impl GraphEntry {
    /// Whether the graph's quantized activations are unsigned (a U8S8 graph, which TensorRT
    /// cannot take).
    pub fn has_uint8_activations(&self) -> bool {
        self.quantization
            .as_ref()
            .and_then(|q| q.activations.as_deref())
            .is_some_and(|a| a.starts_with("uint8"))
    }
}

pub use crate::tokenizer::{TokenizerSection, TOKENIZERS};

/// Sizes the Rust side of the pipeline needs to know about a set. [`SetConfig::check`] bounds
/// every value when a set is opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetConfig {
    /// Token ids per prompt: the tokenizers' 77.
    pub text_len: usize,
    /// `prompt_proj` queries per face: the 16 ID tokens spliced per person.
    pub id_tokens_per_face: usize,
    /// ID patch side in pixels: the condition image's 64.
    pub patch_size: usize,
    pub latent_channels: usize,
    /// Image pixels per latent pixel.
    pub vae_scale_factor: usize,
    /// Latents are divided by this before decoding.
    pub vae_scaling_factor: f64,
    /// `text_dim_1 + text_dim_2`: the two encoders' hidden states side by side.
    pub cross_attention_dim: usize,
    pub text_dim_1: usize,
    pub text_dim_2: usize,
    pub pooled_dim: usize,
    pub id_embedding_dim: usize,
    pub down_residuals: usize,
    /// Latent sides must be divisible by this: the UNet halves them once per downsampling
    /// block and its upsamplers must land on the skip shapes again (SDXL: twice, so 4).
    #[serde(default = "default_latent_multiple")]
    pub latent_multiple: usize,
}

fn default_latent_multiple() -> usize {
    4
}

/// Largest VAE factor, latent multiple, latent channel count and residual count a set may give.
pub const MAX_CONFIG_FACTOR: usize = 64;
/// Largest feature width (text, pooled, ID embedding, cross-attention) a set may give.
pub const MAX_CONFIG_FEATURES: usize = 65_536;

impl SetConfig {
    /// Checks every value against what the runtime can work with: the sizes it has built in are
    /// exact, factors and counts are 1 to [`MAX_CONFIG_FACTOR`], feature widths 1 to
    /// [`MAX_CONFIG_FEATURES`], and the VAE scaling factor a positive normal float32 (it is a
    /// divisor). Errors name the field (`config.<field> ...`).
    pub fn check(&self) -> std::result::Result<(), String> {
        let built_in = [
            (
                "text_len",
                self.text_len,
                crate::tokenizer::MAX_LENGTH,
                "token ids per prompt",
            ),
            (
                "id_tokens_per_face",
                self.id_tokens_per_face,
                crate::splice::ID_TOKENS_PER_PERSON,
                "ID tokens per face",
            ),
            (
                "patch_size",
                self.patch_size,
                crate::condition::PATCH,
                "pixel ID patches",
            ),
        ];
        for (field, value, want, what) in built_in {
            if value != want {
                return Err(format!(
                    "config.{field} is {value}; this runtime works with {want} {what}"
                ));
            }
        }
        let bounded = [
            ("latent_channels", self.latent_channels, MAX_CONFIG_FACTOR),
            ("vae_scale_factor", self.vae_scale_factor, MAX_CONFIG_FACTOR),
            ("latent_multiple", self.latent_multiple, MAX_CONFIG_FACTOR),
            ("down_residuals", self.down_residuals, MAX_CONFIG_FACTOR),
            ("text_dim_1", self.text_dim_1, MAX_CONFIG_FEATURES),
            ("text_dim_2", self.text_dim_2, MAX_CONFIG_FEATURES),
            ("pooled_dim", self.pooled_dim, MAX_CONFIG_FEATURES),
            (
                "id_embedding_dim",
                self.id_embedding_dim,
                MAX_CONFIG_FEATURES,
            ),
            (
                "cross_attention_dim",
                self.cross_attention_dim,
                2 * MAX_CONFIG_FEATURES,
            ),
        ];
        for (field, value, max) in bounded {
            if !(1..=max).contains(&value) {
                return Err(format!("config.{field} is {value}; must be 1 to {max}"));
            }
        }
        if self.cross_attention_dim != self.text_dim_1 + self.text_dim_2 {
            return Err(format!(
                "config.cross_attention_dim is {}; the two text encoders give {} + {} features",
                self.cross_attention_dim, self.text_dim_1, self.text_dim_2
            ));
        }
        let scaling = self.vae_scaling_factor as f32;
        if !(scaling.is_normal() && scaling > 0.0) {
            return Err(format!(
                "config.vae_scaling_factor is {:?}; must be a positive normal float32 (latents \
                 are divided by it)",
                self.vae_scaling_factor
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub size: String,
    /// The set's precision: `fp32`, `fp16` or `int8` (each graph entry also names its own).
    pub precision: String,
    /// A set this one shares files with: the name of a sibling folder (same parent directory).
    /// Manifest paths may then start with `../<base>/` (INT8 sets name the FP32 graphs they do
    /// not quantize, and their goldens, in the set they were made from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default)]
    pub source: serde_json::Value,
    pub config: SetConfig,
    /// One `tokenizer.json` per SDXL tokenizer ([`check_tokenizer_section`]).
    pub tokenizers: TokenizerSection,
    /// A diffusers `scheduler_config.json` object.
    pub scheduler: serde_json::Value,
    pub graphs: BTreeMap<String, GraphEntry>,
}

/// Whether opening a set verifies its files' sha256. Hashing a full-size FP16 set reads ~10 GB;
/// a [`ChecksumCache`] keeps that to the first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    Verify,
    Skip,
}

impl Checksums {
    /// `Skip` when the user passed `--skip-checksums`.
    pub fn from_skip_flag(skip: bool) -> Checksums {
        if skip {
            Checksums::Skip
        } else {
            Checksums::Verify
        }
    }
}

/// A manifest together with the directory it was read from.
#[derive(Debug, Clone)]
pub struct ModelSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Whether the files' sha256 were verified when the set was opened.
    pub checksums: Checksums,
}

impl ModelSet {
    /// [`ModelSet::open_with_cache`] with the user's checksum cache
    /// ([`ChecksumCache::from_env`]).
    pub fn open(dir: &Path, checksums: Checksums) -> Result<ModelSet> {
        ModelSet::open_with_cache(dir, checksums, &ChecksumCache::from_env())
    }

    /// Reads and checks a set; every problem is an [`Error::ModelSet`] naming the set and the
    /// field. Checked: the manifest parses and has this build's format; every path it gives
    /// (graphs, external data, tokenizer files, golden directories) is relative and stays in
    /// the set directory (symbolic links are followed: a set may link to weights stored
    /// elsewhere, and the checksums still cover their bytes); `config` and `scheduler` hold
    /// values the runtime can work with; every pipeline graph and both tokenizers are listed
    /// and their files exist; and with [`Checksums::Verify`] every listed file matches its
    /// sha256 (through `cache`).
    pub fn open_with_cache(
        dir: &Path,
        checksums: Checksums,
        cache: &ChecksumCache,
    ) -> Result<ModelSet> {
        let manifest = read_manifest(dir)?;
        check_format(dir, &manifest, true)?;
        let set = ModelSet {
            dir: dir.to_path_buf(),
            manifest: serde_path_to_error::deserialize(manifest).map_err(|e| {
                Error::model_set(
                    dir.display().to_string(),
                    format!("{MANIFEST_FILE} is malformed: {e}"),
                )
            })?,
            checksums,
        };
        set.check_contents()?;
        let mut files = Vec::new();
        for role in Role::ALL {
            let entry = set.entry(role)?;
            let what = format!("graph {role}");
            files.push((what.clone(), entry.file.as_str(), entry.sha256.as_str()));
            for data in &entry.external_data {
                files.push((what.clone(), data.file.as_str(), data.sha256.as_str()));
            }
        }
        files.extend(tokenizer_files(&set.manifest.tokenizers));
        verify_files(&set.dir, &files, checksums, cache).map_err(|r| set.error(r))?;
        Ok(set)
    }

    /// Everything but the files themselves: roles, paths, config and scheduler values.
    fn check_contents(&self) -> Result<()> {
        let m = &self.manifest;
        if let Some(name) = m.graphs.keys().find(|n| Role::from_name(n).is_none()) {
            return Err(self.error(format!("unknown graph role {name:?}")));
        }
        let base = m.base.as_deref();
        if let Some(base) = base {
            check_base(&self.dir, base).map_err(|r| self.error(r))?;
        }
        check_precision("precision", &m.precision).map_err(|r| self.error(r))?;
        for role in Role::ALL {
            check_graph_entry(role, self.entry(role)?, base).map_err(|r| self.error(r))?;
        }
        check_tokenizer_section(&m.tokenizers, base).map_err(|r| self.error(r))?;
        m.config.check().map_err(|r| self.error(r))?;
        crate::config_dims::check(&m.config, |role| m.graphs.get(role.name()))
            .map_err(|r| self.error(r))?;
        let scheduler = m
            .scheduler
            .as_object()
            .ok_or_else(|| self.error("scheduler: expected a diffusers scheduler config object"))?;
        SchedulerConfig::from_map(scheduler, None, "scheduler").map_err(|e| match e {
            Error::InvalidInput { input, reason } => self.error(format!("{input}: {reason}")),
            other => other,
        })?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn entry(&self, role: Role) -> Result<&GraphEntry> {
        self.manifest
            .graphs
            .get(role.name())
            .ok_or_else(|| self.error(format!("graph {role} is missing from {MANIFEST_FILE}")))
    }

    pub fn graph_path(&self, role: Role) -> Result<PathBuf> {
        Ok(self.dir.join(&self.entry(role)?.file))
    }

    pub fn golden_dir(&self, role: Role) -> Result<Option<PathBuf>> {
        Ok(self.entry(role)?.golden.as_ref().map(|g| self.dir.join(g)))
    }

    /// One sha256 naming everything in the set that shapes an output, as the manifest lists it
    /// (the `model_set_digest` PNG chunk): the digest of the lines
    /// - `<role> <file> <sha256>` for each graph file and external data file, in pipeline order;
    /// - `<tokenizer> <file> <sha256>` for `tokenizer`, then `tokenizer_2` (the tokenizer.json
    ///   holds the vocabulary, the merges and the padding);
    /// - `config <JSON>` and `scheduler <JSON>`, the two sections in canonical JSON
    ///   ([`canonical_json`]; `config` with the default `latent_multiple` filled in),
    ///
    /// each ending in `\n`; sha256 values in lowercase. The files are only known to match these
    /// checksums when the set was opened with [`Checksums::Verify`].
    pub fn model_set_digest(&self) -> Result<String> {
        let mut lines = String::new();
        for role in Role::ALL {
            let entry = self.entry(role)?;
            let files = std::iter::once((&entry.file, &entry.sha256))
                .chain(entry.external_data.iter().map(|f| (&f.file, &f.sha256)));
            for (file, sha) in files {
                lines += &format!("{role} {file} {}\n", sha.to_ascii_lowercase());
            }
        }
        for name in TOKENIZERS {
            let entry = self.manifest.tokenizers.get(name).ok_or_else(|| {
                self.error(format!("{MANIFEST_FILE} has no tokenizers.{name} entry"))
            })?;
            let (file, sha) = (&entry.file, entry.sha256.to_ascii_lowercase());
            lines += &format!("{name} {file} {sha}\n");
        }
        let config = serde_json::to_value(&self.manifest.config)
            .map_err(|e| self.error(format!("config: {e}")))?;
        lines += &format!("config {}\n", canonical_json(&config));
        lines += &format!("scheduler {}\n", canonical_json(&self.manifest.scheduler));
        Ok(sha256_hex(lines.as_bytes()))
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::model_set(self.dir.display().to_string(), reason)
    }
}

/// The parsed `manifest.json` of `dir`, refusing weightless sets.
fn read_manifest(dir: &Path) -> Result<serde_json::Value> {
    let set_name = dir.display().to_string();
    if !dir.is_dir() {
        return Err(Error::model_set(&set_name, "directory does not exist"));
    }
    let path = dir.join(MANIFEST_FILE);
    let text = crate::fsutil::read_text_limited(&path, MAX_MANIFEST_BYTES, "manifest")
        .map_err(|e| Error::model_set(&set_name, format!("cannot read {MANIFEST_FILE}: {e}")))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::model_set(&set_name, format!("{MANIFEST_FILE} is malformed: {e}")))?;
    if raw.get("weightless").and_then(serde_json::Value::as_bool) == Some(true) {
        return Err(Error::model_set(
            &set_name,
            "holds graph structure only (exported with --weightless); write its weights with \
             `python exporter-specs/materialize.py SET OUT` and open OUT",
        ));
    }
    Ok(raw)
}

/// The manifest's `format` must be this build's (checked before the rest is parsed, so that an
/// older set gets this message rather than a missing field); `required`: it must be given.
fn check_format(dir: &Path, raw: &serde_json::Value, required: bool) -> Result<()> {
    let format = match raw.get("format") {
        None if !required => return Ok(()),
        None => "none".to_string(),
        Some(value) => value.to_string(),
    };
    if format != FORMAT_VERSION.to_string() {
        return Err(Error::model_set(
            dir.display().to_string(),
            format!(
                "{MANIFEST_FILE} has format {format}, this build reads format {FORMAT_VERSION} \
                 (export the set again with exporter-specs/export.py)"
            ),
        ));
    }
    Ok(())
}

/// The `tokenizers` section of the manifest in `dir`, parsed, checked and verified as
/// [`ModelSet::open_with_cache`] does it, without requiring the rest of a set: what
/// `idpatch tokenize` reads. The manifest must exist and have the section; a `format`, when
/// given, must be this build's.
pub fn open_tokenizers(
    dir: &Path,
    checksums: Checksums,
    cache: &ChecksumCache,
) -> Result<TokenizerSection> {
    let raw = read_manifest(dir)?;
    check_format(dir, &raw, false)?;
    let set_error = |reason: String| Error::model_set(dir.display().to_string(), reason);
    let section = raw
        .get("tokenizers")
        .ok_or_else(|| set_error(format!("{MANIFEST_FILE} has no tokenizers section")))?;
    let base = match raw.get("base") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(b)) => Some(b.as_str()),
        Some(other) => {
            return Err(set_error(format!(
                "{MANIFEST_FILE} is malformed: base: {other} is not a folder name"
            )))
        }
    };
    if let Some(base) = base {
        check_base(dir, base).map_err(set_error)?;
    }
    let tokenizers: TokenizerSection = serde_path_to_error::deserialize(section)
        .map_err(|e| set_error(format!("{MANIFEST_FILE} is malformed: tokenizers.{e}")))?;
    check_tokenizer_section(&tokenizers, base).map_err(set_error)?;
    verify_files(dir, &tokenizer_files(&tokenizers), checksums, cache).map_err(set_error)?;
    Ok(tokenizers)
}

/// The tokenizers section lists exactly `tokenizer` and `tokenizer_2`, each a file inside the
/// set (or, with a `base`, inside `../<base>/`) with a sha256. Errors name the entry
/// (`tokenizers.tokenizer_2: file ...`).
pub fn check_tokenizer_section(
    section: &TokenizerSection,
    base: Option<&str>,
) -> std::result::Result<(), String> {
    if let Some(name) = section.keys().find(|n| !TOKENIZERS.contains(&n.as_str())) {
        return Err(format!(
            "unknown tokenizer {name:?} (a set lists {})",
            TOKENIZERS.join(" and ")
        ));
    }
    for name in TOKENIZERS {
        let entry = section
            .get(name)
            .ok_or_else(|| format!("{MANIFEST_FILE} has no tokenizers.{name} entry"))?;
        check_file_entry(
            &format!("tokenizers.{name}"),
            "file",
            &entry.file,
            &entry.sha256,
            base,
        )?;
    }
    Ok(())
}

/// `(what, file, sha256)` of each tokenizer file, for [`verify_files`].
fn tokenizer_files(section: &TokenizerSection) -> Vec<(String, &str, &str)> {
    TOKENIZERS
        .iter()
        .filter_map(|name| section.get(*name).map(|e| (name, e)))
        .map(|(name, e)| {
            (
                format!("tokenizers.{name}"),
                e.file.as_str(),
                e.sha256.as_str(),
            )
        })
        .collect()
}

/// Paths and sha256 strings of one graph entry; IO names must be file-name safe where goldens
/// are read by them.
fn check_graph_entry(
    role: Role,
    entry: &GraphEntry,
    base: Option<&str>,
) -> std::result::Result<(), String> {
    let what = format!("graph {role}");
    check_precision(&format!("{what}: precision"), &entry.precision)?;
    check_file_entry(&what, "file", &entry.file, &entry.sha256, base)?;
    for data in &entry.external_data {
        check_file_entry(&what, "external_data file", &data.file, &data.sha256, base)?;
    }
    if let Some(golden) = &entry.golden {
        check_set_path(&what, "golden", golden, base)?;
        let names = entry.inputs.iter().chain(&entry.outputs).map(|s| &s.name);
        for name in names {
            if name.is_empty() || name.contains(['/', '\\', '\0']) {
                return Err(format!(
                    "{what}: tensor name {name:?} cannot name a golden file (input.<name>.npy)"
                ));
            }
        }
    }
    Ok(())
}

fn check_file_entry(
    what: &str,
    key: &str,
    file: &str,
    sha256: &str,
    base: Option<&str>,
) -> std::result::Result<(), String> {
    check_set_path(what, key, file, base)?;
    if !is_sha256(sha256) {
        return Err(format!(
            "{what}: the sha256 of {file} is {sha256:?}, not 64 hex digits"
        ));
    }
    Ok(())
}

/// Checks that every file exists and, with `Verify`, matches its sha256 (each distinct file
/// hashed once). `files` are `(what, relative path, sha256)`; errors name `what` and the file.
fn verify_files(
    dir: &Path,
    files: &[(String, &str, &str)],
    checksums: Checksums,
    cache: &ChecksumCache,
) -> std::result::Result<(), String> {
    for (what, file, _) in files {
        match crate::fsutil::regular_file_problem(&dir.join(file)) {
            Some(problem) if problem == "does not exist" => {
                return Err(format!("{what}: file {file} is missing"))
            }
            Some(problem) => return Err(format!("{what}: file {file} {problem}")),
            None => {}
        }
    }
    if checksums == Checksums::Skip {
        return Ok(());
    }
    let mut known: BTreeMap<&str, String> = BTreeMap::new();
    for (what, file, sha) in files {
        let actual = match known.get(file) {
            Some(actual) => actual.clone(),
            None => {
                let actual = cache
                    .sha256(&dir.join(file))
                    .map_err(|e| format!("{what}: {e}"))?;
                known.insert(file, actual.clone());
                actual
            }
        };
        if !actual.eq_ignore_ascii_case(sha) {
            return Err(format!(
                "{what}: checksum mismatch for {file} (manifest {sha}, file {actual})"
            ));
        }
    }
    Ok(())
}

/// JSON with object keys sorted (by their UTF-8 bytes), no whitespace, strings escaped and
/// numbers written as serde_json writes them (integers as integers, floats in their shortest
/// round-trip form): the same text for the same parsed values whatever their order in the file.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// Compares what a loaded graph declares with the manifest's spec. Names and dtypes must agree
/// exactly, and so must ranks; a dimension the spec fixes may be symbolic in the graph (exporters
/// often leave output dims unnamed), but a dimension the spec leaves dynamic must not be fixed.
pub fn check_io(
    role: Role,
    kind: &str,
    spec: &[TensorSpec],
    graph: &[TensorSpec],
) -> std::result::Result<(), String> {
    for s in spec {
        let Some(g) = graph.iter().find(|g| g.name == s.name) else {
            let names: Vec<&str> = graph.iter().map(|g| g.name.as_str()).collect();
            return Err(format!(
                "graph {role}: {kind} {} is in the manifest but not in the graph (graph {kind}s: {})",
                s.name,
                names.join(", ")
            ));
        };
        if g.dtype != s.dtype {
            return Err(format!(
                "graph {role}: {kind} {} is {} in the graph, manifest says {}",
                s.name, g.dtype, s.dtype
            ));
        }
        let dims_agree = g.shape.len() == s.shape.len()
            && s.shape.iter().zip(&g.shape).all(|(sd, gd)| match (sd, gd) {
                (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
                (Dim::Fixed(_), Dim::Symbol(_)) => true,
                (Dim::Symbol(_), Dim::Fixed(_)) => false,
                (Dim::Symbol(_), Dim::Symbol(_)) => true,
            });
        if !dims_agree {
            return Err(format!(
                "graph {role}: {kind} {} has shape {} in the graph, manifest says {}",
                s.name,
                g.shape_string(),
                s.shape_string()
            ));
        }
    }
    if let Some(extra) = graph
        .iter()
        .find(|g| !spec.iter().any(|s| s.name == g.name))
    {
        return Err(format!(
            "graph {role}: {kind} {} is in the graph but not in the manifest",
            extra.name
        ));
    }
    Ok(())
}
