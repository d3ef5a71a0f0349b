//! The official TSIT code's parameter names (EndlessSora/TSIT: `TSITGenerator`,
//! `MultiscaleDiscriminator`, `ConvEncoder`) mapped to reprise's, so that the authors' weights
//! (`latest_net_G.pth`, `latest_net_D.pth`, `latest_net_E.pth`, put in one safetensors file as
//! `G/…`, `D/…`, `E/…` by `scripts/convert_tsit_ckpt.py`) load into reprise's networks.
//!
//! The differences: the generator's FADE blocks are named by their stream level (`head_0` is
//! `block_7`, `G_middle_0` `block_6`, …, `up_3` `block_1`); each block's FADE γ and β
//! convolutions (`norm_{0,1,s}.mlp_{gamma,beta}`) are one convolution `gamma_beta` here, their
//! outputs in the order γ₀ β₀ γ₁ β₁ γ_s β_s, and the parameter-free norms' statistics sit at
//! `norm_{0,1,2}`; the VAE encoder lives in the generator as `encoder.`; the official
//! `nn.Sequential` wrappers (`model1.0.0.weight_orig`, `layer1.0.weight_orig`) are flattened.

use reprise_core::{Error, Result};
use std::collections::BTreeMap;
use tch::Tensor;

/// The official generator blocks and reprise's block index j (`block_j` takes stream level j).
pub(crate) const BLOCKS: [(&str, usize); 7] = [
    ("head_0", 7),
    ("G_middle_0", 6),
    ("G_middle_1", 5),
    ("up_0", 4),
    ("up_1", 3),
    ("up_2", 2),
    ("up_3", 1),
];

/// Which of reprise's stores a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Store {
    /// The generator (the VAE encoder included).
    G,
    /// The discriminator.
    D,
}

/// Reprise's store and name of the official tensor `key` of network `net` (`G`, `D` or
/// `E`), with, for a FADE γ/β convolution, the part of `gamma_beta` it is. `None` for a name
/// reprise has no place for.
pub fn rename(net: &str, key: &str) -> Option<(Store, String, Option<i64>)> {
    match net {
        "E" => Some((
            Store::G,
            format!("encoder.{}", key.replacen(".0.", ".", 1)),
            None,
        )),
        "D" => {
            // discriminator_k.model0.0.w, model{n}.0.0.w (spectral + instance norm), last .0.w
            let p: Vec<&str> = key.split('.').collect();
            (p.len() >= 3).then(|| {
                (
                    Store::D,
                    format!("{}.{}.{}", p[0], p[1], p[p.len() - 1]),
                    None,
                )
            })
        }
        "G" => {
            for (off, j) in BLOCKS {
                let Some(rest) = key.strip_prefix(&format!("{off}.")) else {
                    continue;
                };
                let p: Vec<&str> = rest.split('.').collect();
                if !p[0].starts_with("norm_") {
                    return Some((Store::G, format!("block_{j}.{rest}"), None));
                }
                let k = match p[0] {
                    "norm_0" => 0,
                    "norm_1" => 1,
                    "norm_s" => 2,
                    _ => return None,
                };
                return match (p.get(1).copied(), p.get(2)) {
                    (Some("param_free_norm"), Some(stat)) => {
                        Some((Store::G, format!("block_{j}.norm_{k}.{stat}"), None))
                    }
                    (Some(gb @ ("mlp_gamma" | "mlp_beta")), Some(leaf)) => {
                        let part = 2 * k + i64::from(gb == "mlp_beta");
                        Some((Store::G, format!("block_{j}.gamma_beta.{leaf}"), Some(part)))
                    }
                    _ => None,
                };
            }
            Some((Store::G, key.to_string(), None))
        }
        _ => None,
    }
}

/// The official tensors `named` (`G/…`, `D/…`, `E/…`) in reprise's layout, by store and name,
/// the γ/β parts concatenated. Batch counters are dropped; an unknown name, a γ/β part missing
/// or a name given twice is an error.
pub fn to_reprise(named: &[(String, Tensor)]) -> Result<BTreeMap<(Store, String), Tensor>> {
    let mut parts: BTreeMap<(Store, String), BTreeMap<i64, Tensor>> = BTreeMap::new();
    let mut whole = BTreeMap::new();
    for (full, t) in named {
        if full.ends_with("num_batches_tracked") {
            continue;
        }
        let (net, key) = full
            .split_once('/')
            .ok_or_else(|| Error::msg(format!("`{full}`: expected G/…, D/… or E/…")))?;
        let (store, name, part) = rename(net, key)
            .ok_or_else(|| Error::msg(format!("`{full}` is not a TSIT parameter reprise knows")))?;
        let dup = match part {
            Some(i) => parts
                .entry((store, name.clone()))
                .or_default()
                .insert(i, t.shallow_clone())
                .is_some(),
            None => whole
                .insert((store, name.clone()), t.shallow_clone())
                .is_some(),
        };
        if dup {
            return Err(Error::msg(format!("`{full}` maps to `{name}` twice")));
        }
    }
    for (k, ps) in parts {
        let n = ps.len() as i64;
        if n % 2 != 0 || ps.keys().copied().ne(0..n) {
            return Err(Error::msg(format!(
                "{}: FADE γ/β convolutions missing",
                k.1
            )));
        }
        let v: Vec<Tensor> = ps.into_values().collect();
        whole.insert(k, Tensor::cat(&v, 0));
    }
    Ok(whole)
}

/// Loads the tensors of `store` from [`to_reprise`]'s map into `vs`: every variable must be
/// there with its shape, and every tensor of the map for `store` must be a variable of `vs`
/// (an official name reprise's network has no place for, or a tensor of another shape, is an
/// error naming it: never dropped, never reshaped into place).
pub fn load(
    vs: &tch::nn::VarStore,
    store: Store,
    map: &BTreeMap<(Store, String), Tensor>,
    from: &str,
) -> Result<()> {
    let vars = vs.variables();
    let unknown: Vec<&str> = map
        .keys()
        .filter(|(s, name)| *s == store && !vars.contains_key(name))
        .map(|(_, name)| name.as_str())
        .collect();
    if let Some(first) = unknown.first() {
        return Err(Error::msg(format!(
            "{from}: {} tensor(s) of the {store:?} network have no place in reprise's (e.g. `{first}`): another architecture or configuration (tsit.model)?",
            unknown.len()
        )));
    }
    let named: Vec<(String, Tensor)> = map
        .iter()
        .filter(|((s, _), _)| *s == store)
        .map(|((_, name), t)| (name.clone(), t.shallow_clone()))
        .collect();
    reprise_core::nn::load_named(vs, &named, &|_| true, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_names_map_to_reprise_s() {
        let r = rename;
        assert_eq!(
            r("G", "head_0.norm_s.mlp_beta.weight"),
            Some((Store::G, "block_7.gamma_beta.weight".into(), Some(5)))
        );
        assert_eq!(
            r("G", "up_3.norm_1.param_free_norm.running_var"),
            Some((Store::G, "block_1.norm_1.running_var".into(), None))
        );
        assert_eq!(
            r("G", "content_stream.res_0.conv_0.weight_orig"),
            Some((
                Store::G,
                "content_stream.res_0.conv_0.weight_orig".into(),
                None
            ))
        );
        assert_eq!(
            r("D", "discriminator_1.model2.0.0.weight_u"),
            Some((Store::D, "discriminator_1.model2.weight_u".into(), None))
        );
        assert_eq!(
            r("E", "layer3.0.weight_orig"),
            Some((Store::G, "encoder.layer3.weight_orig".into(), None))
        );
        assert_eq!(r("G", "up_0.norm_9.mlp_beta.weight"), None);
        let t = |k: &str| {
            (
                k.to_string(),
                Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)),
            )
        };
        let one_part = [t("G/up_0.norm_0.mlp_gamma.weight")];
        assert!(to_reprise(&one_part).is_err(), "β missing");
        assert!(to_reprise(&[t("X/a.b")]).is_err());
        let both = [
            t("G/up_0.norm_0.mlp_gamma.bias"),
            t("G/up_0.norm_0.mlp_beta.bias"),
        ];
        let m = to_reprise(&both).unwrap();
        assert_eq!(
            m[&(Store::G, "block_4.gamma_beta.bias".into())].size(),
            vec![4]
        );
    }
}
