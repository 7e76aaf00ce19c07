//! A set's `config` checked against the tensor shapes its manifest declares for the graphs.
//!
//! Every size in `config` is also the size of some graph input or output (the exporter writes
//! both from one model configuration). [`check`] compares them when a set is opened, so a set
//! whose config and graphs disagree is a set error naming both (exit 2), not a shape error from
//! the backend halfway through a generation. Tensors the manifest does not list and dims it
//! declares symbolic or not at all (a shorter shape) are not compared: loading the graph checks
//! the manifest's names and shapes against the graph itself.

use crate::manifest::{Dim, GraphEntry, Role, SetConfig, TensorSpec};

/// Which side of a graph a tensor is on.
#[derive(Clone, Copy)]
enum Side {
    Input,
    Output,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// `(field, role, side, tensor, axis)`: `config.<field>` must equal axis `axis` of `tensor`, on
/// the `side` of `role`.
const RULES: &[(&str, Role, Side, &str, usize)] = {
    use Role::*;
    use Side::*;
    &[
        ("text_len", TextEncoder, Input, "input_ids", 1),
        ("text_len", TextEncoder2, Input, "input_ids", 1),
        ("text_dim_1", TextEncoder, Output, "hidden_states", 2),
        ("text_dim_2", TextEncoder2, Output, "hidden_states", 2),
        ("pooled_dim", TextEncoder2, Output, "text_embeds", 1),
        ("pooled_dim", Unet, Input, "text_embeds", 1),
        ("pooled_dim", Controlnet, Input, "text_embeds", 1),
        (
            "cross_attention_dim",
            Unet,
            Input,
            "encoder_hidden_states",
            2,
        ),
        (
            "cross_attention_dim",
            Controlnet,
            Input,
            "encoder_hidden_states",
            2,
        ),
        ("cross_attention_dim", PromptProj, Output, "id_tokens", 2),
        ("id_tokens_per_face", PromptProj, Output, "id_tokens", 1),
        ("id_embedding_dim", Arcface, Output, "embedding", 1),
        ("id_embedding_dim", PatchProj, Input, "id_embeds", 2),
        ("id_embedding_dim", PromptProj, Input, "id_embeds", 2),
        ("patch_size", PatchProj, Output, "id_patches", 2),
        ("patch_size", PatchProj, Output, "id_patches", 3),
        ("latent_channels", Unet, Input, "sample", 1),
        ("latent_channels", Unet, Output, "noise_pred", 1),
        ("latent_channels", Controlnet, Input, "sample", 1),
        ("latent_channels", VaeDecoder, Input, "latent", 1),
    ]
};

/// The value of `config.<field>` for the fields [`RULES`] names.
fn value_of(c: &SetConfig, field: &str) -> usize {
    match field {
        "text_len" => c.text_len,
        "text_dim_1" => c.text_dim_1,
        "text_dim_2" => c.text_dim_2,
        "pooled_dim" => c.pooled_dim,
        "cross_attention_dim" => c.cross_attention_dim,
        "id_tokens_per_face" => c.id_tokens_per_face,
        "id_embedding_dim" => c.id_embedding_dim,
        "patch_size" => c.patch_size,
        "latent_channels" => c.latent_channels,
        other => unreachable!("no config field {other} in RULES"),
    }
}

/// The tensors of `entry`'s `side`.
fn tensors(entry: &GraphEntry, side: Side) -> &[TensorSpec] {
    match side {
        Side::Input => &entry.inputs,
        Side::Output => &entry.outputs,
    }
}

/// Compares every size in `config` with the graphs' declared shapes (`entry` gives a role's
/// manifest entry) and the number of ControlNet residuals with `config.down_residuals`.
///
/// # Errors
/// A message naming the config field, the graph, the tensor and both values, e.g.
/// `config.pooled_dim is 25; graph text_encoder_2 output text_embeds has 24 on axis 1`.
pub fn check<'a>(
    config: &SetConfig,
    entry: impl Fn(Role) -> Option<&'a GraphEntry>,
) -> Result<(), String> {
    for &(field, role, side, tensor, axis) in RULES {
        let Some(graph) = entry(role) else { continue };
        let value = value_of(config, field);
        // A tensor the manifest does not list is reported when the graph loads (its names
        // are compared with the graph's own).
        let Some(spec) = tensors(graph, side).iter().find(|t| t.name == tensor) else {
            continue;
        };
        // A symbolic dim, or a rank the graph's own input checks report when it loads, is
        // not compared.
        if let Some(Dim::Fixed(n)) = spec.shape.get(axis) {
            if *n != value {
                return Err(format!(
                    "config.{field} is {value}; graph {role} {} {tensor} has {n} on axis {axis}",
                    side.name()
                ));
            }
        }
    }
    check_residuals(config, &entry)
}

/// The UNet takes, and the ControlNet gives, `down_residuals` down-block residuals.
fn check_residuals<'a>(
    config: &SetConfig,
    entry: &impl Fn(Role) -> Option<&'a GraphEntry>,
) -> Result<(), String> {
    for (role, side) in [(Role::Controlnet, Side::Output), (Role::Unet, Side::Input)] {
        let Some(graph) = entry(role) else { continue };
        let count = tensors(graph, side)
            .iter()
            .filter(|t| t.name.starts_with("down_residual_"))
            .count();
        if count != config.down_residuals {
            return Err(format!(
                "config.down_residuals is {}; graph {role} has {count} {} down_residual_* tensors",
                config.down_residuals,
                side.name()
            ));
        }
    }
    Ok(())
}
