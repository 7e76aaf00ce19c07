//! Graph-set manifests (`models/<set>/manifest.json`, format described in models/README.md):
//! which graph plays which role, its files and checksums, and the IO spec every backend checks
//! the loaded graph against.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tensor::DType;
use crate::{Error, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizerFiles {
    pub vocab: String,
    pub merges: String,
    pub pad_token_id: i64,
}

/// Sizes the Rust side of the pipeline needs to know about a set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetConfig {
    pub text_len: usize,
    pub id_tokens_per_face: usize,
    pub patch_size: usize,
    pub latent_channels: usize,
    pub vae_scale_factor: usize,
    pub vae_scaling_factor: f64,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub size: String,
    pub precision: String,
    #[serde(default)]
    pub source: serde_json::Value,
    pub config: SetConfig,
    pub tokenizers: BTreeMap<String, TokenizerFiles>,
    /// A diffusers `scheduler_config.json` object.
    pub scheduler: serde_json::Value,
    pub graphs: BTreeMap<String, GraphEntry>,
}

/// Whether opening a set hashes its files. Hashing a full-size FP16 set reads ~10 GB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    Verify,
    Skip,
}

/// A manifest together with the directory it was read from.
#[derive(Debug, Clone)]
pub struct ModelSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelSet {
    /// Reads and checks a set: the manifest parses, every pipeline graph is listed, its files
    /// exist and (with [`Checksums::Verify`]) match their sha256.
    pub fn open(dir: &Path, checksums: Checksums) -> Result<ModelSet> {
        let set_name = dir.display().to_string();
        if !dir.is_dir() {
            return Err(Error::model_set(&set_name, "directory does not exist"));
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            Error::model_set(&set_name, format!("cannot read {MANIFEST_FILE}: {e}"))
        })?;
        let malformed = |e: serde_json::Error| {
            Error::model_set(&set_name, format!("{MANIFEST_FILE} is malformed: {e}"))
        };
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(malformed)?;
        if raw.get("weightless").and_then(serde_json::Value::as_bool) == Some(true) {
            return Err(Error::model_set(
                &set_name,
                "holds graph structure only (exported with --weightless); write its weights with \
                 `python exporter-specs/materialize.py SET OUT` and open OUT",
            ));
        }
        let manifest: Manifest = serde_json::from_str(&text).map_err(malformed)?;
        if manifest.format != FORMAT_VERSION {
            return Err(Error::model_set(
                &set_name,
                format!(
                    "{MANIFEST_FILE} has format {}, this build reads format {FORMAT_VERSION}",
                    manifest.format
                ),
            ));
        }
        let set = ModelSet {
            dir: dir.to_path_buf(),
            manifest,
        };
        for name in set.manifest.graphs.keys() {
            if Role::from_name(name).is_none() {
                return Err(set.error(format!("unknown graph role {name:?}")));
            }
        }
        for role in Role::ALL {
            let entry = set.entry(role)?;
            let files = std::iter::once((&entry.file, &entry.sha256))
                .chain(entry.external_data.iter().map(|f| (&f.file, &f.sha256)));
            for (file, sha) in files {
                let path = set.dir.join(file);
                if !path.is_file() {
                    return Err(set.error(format!("graph {role}: file {file} is missing")));
                }
                if checksums == Checksums::Verify {
                    let actual = sha256_file(&path)?;
                    if !actual.eq_ignore_ascii_case(sha) {
                        return Err(set.error(format!(
                            "graph {role}: checksum mismatch for {file} (manifest {sha}, file {actual})"
                        )));
                    }
                }
            }
        }
        Ok(set)
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

    /// One sha256 naming every graph file of the set, as listed in the manifest: the digest of
    /// the lines `<role> <file> <sha256>\n` (external data files too) in pipeline order.
    pub fn graphs_digest(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        for role in Role::ALL {
            let entry = self.entry(role)?;
            let files = std::iter::once((&entry.file, &entry.sha256))
                .chain(entry.external_data.iter().map(|f| (&f.file, &f.sha256)));
            for (file, sha) in files {
                hasher.update(format!("{role} {file} {}\n", sha.to_ascii_lowercase()));
            }
        }
        Ok(hex(&hasher.finalize()))
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::model_set(self.dir.display().to_string(), reason)
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
