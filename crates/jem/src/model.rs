//! The classifier f(x) whose logits define the energy, built from its config.

use crate::config::ModelConfig;
use reprise_core::checkpoint::Checkpoint;
use reprise_core::models::{Cnn, Wrn};
use reprise_core::nn::Mlp;
use reprise_core::Result;
use tch::nn::{Module, ModuleT, VarStore};
use tch::{Device, Tensor};

enum Net {
    Mlp(Mlp),
    Cnn(Cnn),
    Wrn(Box<Wrn>),
}

/// A classifier and its variables.
pub struct Classifier {
    /// The variables (saved in checkpoints as `model.<name>`).
    pub vs: VarStore,
    net: Net,
    classes: i64,
}

impl Classifier {
    /// Builds the classifier for inputs `shape` (C, H, W) and `classes`, initialised from `seed`.
    pub fn new(
        cfg: &ModelConfig,
        shape: &[i64],
        classes: i64,
        device: Device,
        seed: u64,
    ) -> Classifier {
        tch::manual_seed(seed as i64);
        let vs = VarStore::new(device);
        let root = vs.root();
        let net = match cfg {
            ModelConfig::Mlp { width, depth, act } => Net::Mlp(Mlp::new(
                &root,
                shape.iter().product(),
                *width,
                *depth,
                classes,
                *act,
            )),
            ModelConfig::Cnn(c) => {
                let mut c = c.clone();
                c.in_channels = shape[0];
                c.size = shape[1];
                c.classes = classes;
                Net::Cnn(Cnn::new(&root, &c))
            }
            ModelConfig::Wrn(c) => {
                let mut c = c.clone();
                c.in_channels = shape[0];
                c.classes = classes;
                Net::Wrn(Box::new(Wrn::new(&root, &c)))
            }
        };
        Classifier { vs, net, classes }
    }

    /// Number of classes.
    pub fn classes(&self) -> i64 {
        self.classes
    }

    /// Logits, in train or eval mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.net {
            Net::Mlp(m) => m.forward(x),
            Net::Cnn(m) => m.forward(x),
            Net::Wrn(m) => m.forward_t(x, train),
        }
    }

    /// Logits in eval mode without a graph, in batches of `batch`.
    pub fn logits(&self, x: &Tensor, batch: i64) -> Tensor {
        tch::no_grad(|| {
            let n = x.size()[0];
            let parts: Vec<Tensor> = (0..n)
                .step_by(batch as usize)
                .map(|i| {
                    self.forward_t(
                        &x.narrow(0, i, batch.min(n - i)).to_device(self.vs.device()),
                        false,
                    )
                })
                .collect();
            Tensor::cat(&parts, 0)
        })
    }

    /// Puts the weights into a checkpoint.
    pub fn save(&self, ck: &mut Checkpoint) {
        ck.put_vars("model", &self.vs);
    }

    /// Checks, copying nothing, that a checkpoint holds every weight with its kind and shape.
    pub fn check(&self, ck: &Checkpoint) -> Result<()> {
        ck.check_vars("model", &self.vs)
    }

    /// Loads the weights from a checkpoint (all checked before any is copied).
    pub fn load(&mut self, ck: &Checkpoint) -> Result<()> {
        ck.load_vars("model", &self.vs)
    }
}
