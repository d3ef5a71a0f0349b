//! The files and folders a paper-scale run reads and reprise cannot fetch (CIFAR, ImageNet,
//! Cityscapes, ADE20K, Yosemite summer→winter, pretrained weights): what each is, the layout
//! expected, where researchers get it, and the spec key that points at it. A run checks them
//! all before it starts (`runner run`), and `runner data --check <experiment>` lists them.

use crate::error::{Error, Result};
use crate::spec::DataSpec;
use std::path::PathBuf;

/// What kind of input a path must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version.
    Cifar100,
    /// MNIST or Fashion-MNIST IDX files.
    Idx,
    /// An ImageFolder tree (ImageNet): `train/` and `val/` of class folders.
    ImageFolder,
    /// Cityscapes `leftImg8bit/` and `gtFine/`.
    Cityscapes,
    /// ADE20K's ADEChallengeData2016 `images/` and `annotations/`.
    Ade20k,
    /// CycleGAN's Yosemite summer→winter `trainA/ trainB/ testA/ testB/`.
    Summer2Winter,
    /// The ImageNet VGG-19 of the perceptual loss, as safetensors with torchvision's names.
    Vgg19,
    /// A robust ImageNet ResNet-50 of the robustness library, converted to safetensors.
    RobustResnet50,
    /// pytorch-fid's Inception-v3 (FID weights), converted to safetensors.
    FidInception,
    /// The released JEM checkpoint, converted to safetensors.
    JemCheckpoint,
    /// The released TSIT generator (and encoder), converted to safetensors.
    TsitCheckpoint,
    /// A checkpoint written by reprise itself (`model.safetensors` of a finished run).
    RunCheckpoint,
}

impl InputKind {
    /// What it is, in a few words.
    pub fn what(self) -> &'static str {
        match self {
            InputKind::Cifar10 => "CIFAR-10 (binary version)",
            InputKind::Cifar100 => "CIFAR-100 (binary version)",
            InputKind::Idx => "MNIST-style IDX files",
            InputKind::ImageFolder => "an ImageFolder tree (ImageNet ILSVRC-2012)",
            InputKind::Cityscapes => "Cityscapes (fine annotations)",
            InputKind::Ade20k => "ADE20K scene parsing (ADEChallengeData2016)",
            InputKind::Summer2Winter => "Yosemite summer→winter",
            InputKind::Vgg19 => "the ImageNet VGG-19 of the perceptual loss",
            InputKind::RobustResnet50 => "a robust ImageNet ResNet-50",
            InputKind::FidInception => "the FID Inception-v3 weights",
            InputKind::JemCheckpoint => "the released JEM checkpoint",
            InputKind::TsitCheckpoint => "the released TSIT checkpoint",
            InputKind::RunCheckpoint => "a checkpoint of a finished reprise run",
        }
    }

    /// The layout expected at the path.
    pub fn layout(self) -> &'static str {
        match self {
            InputKind::Cifar10 => {
                "data_batch_1.bin … data_batch_5.bin and test_batch.bin in the folder"
            }
            InputKind::Cifar100 => "train.bin and test.bin in the folder",
            InputKind::Idx => {
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
                 t10k-labels-idx1-ubyte (each plain or .gz) in the folder"
            }
            InputKind::ImageFolder => "train/<class>/<image> and val/<class>/<image> (JPEG or PNG)",
            InputKind::Cityscapes => {
                "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and \
                 gtFine/{train,val}/<city>/*_gtFine_{labelIds,instanceIds}.png"
            }
            InputKind::Ade20k => {
                "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png, \
                 in the folder or in its ADEChallengeData2016/"
            }
            InputKind::Summer2Winter => "trainA/, trainB/, testA/, testB/ of .jpg images",
            InputKind::Vgg19 => {
                "a safetensors file with torchvision's vgg19 names (features.N.weight)"
            }
            InputKind::RobustResnet50 => "a safetensors file of the ResNet-50 (torchvision names)",
            InputKind::FidInception => "a safetensors file of pytorch-fid's FIDInceptionA… network",
            InputKind::JemCheckpoint | InputKind::TsitCheckpoint | InputKind::RunCheckpoint => {
                "a safetensors file"
            }
        }
    }

    /// Where researchers get it (and the converter to run, for weights).
    pub fn source(self) -> &'static str {
        match self {
            InputKind::Cifar10 => {
                "download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html \
                 and unpack it (it holds cifar-10-batches-bin/)"
            }
            InputKind::Cifar100 => {
                "download cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html \
                 and unpack it (it holds cifar-100-binary/)"
            }
            InputKind::Idx => "the four files from the dataset's page",
            InputKind::ImageFolder => {
                "ILSVRC-2012 from https://image-net.org (registration), with the validation \
                 images moved into class folders as for torchvision's ImageFolder"
            }
            InputKind::Cityscapes => {
                "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from \
                 https://www.cityscapes-dataset.com (registration)"
            }
            InputKind::Ade20k => "ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu",
            InputKind::Summer2Winter => {
                "summer2winter_yosemite.zip of CycleGAN's datasets \
                 (junyanz/pytorch-CycleGAN-and-pix2pix, datasets/download_cyclegan_dataset.sh)"
            }
            InputKind::Vgg19 => {
                "torchvision's vgg19(weights=\"IMAGENET1K_V1\") saved with \
                 safetensors.torch.save_file(model.state_dict(), PATH)"
            }
            InputKind::RobustResnet50 => {
                "a checkpoint of madrylab/robust-models-transfer (e.g. resnet50_l2_eps3.ckpt), \
                 converted with scripts/convert_robustness_ckpt.py CKPT PATH"
            }
            InputKind::FidInception => {
                "pytorch-fid's pt_inception-2015-12-05 weights, converted with \
                 scripts/convert_fid_inception.py PATH"
            }
            InputKind::JemCheckpoint => {
                "CIFAR10_MODEL.pt of wgrathwohl/JEM, converted with \
                 scripts/convert_jem_ckpt.py CIFAR10_MODEL.pt PATH"
            }
            InputKind::TsitCheckpoint => {
                "latest_net_G.pth (and _E, _D) of EndlessSora/TSIT, converted with \
                 scripts/convert_tsit_ckpt.py --G … PATH"
            }
            InputKind::RunCheckpoint => "a finished run of the matching experiment",
        }
    }

    /// The entries under the path whose presence the layout needs (the path itself for a file).
    fn markers(self) -> &'static [&'static str] {
        match self {
            InputKind::Cifar10 => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
            ],
            InputKind::Cifar100 => &["train.bin", "test.bin"],
            InputKind::Idx => &[
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ],
            InputKind::ImageFolder => &["train", "val"],
            InputKind::Cityscapes => &[
                "leftImg8bit/train",
                "leftImg8bit/val",
                "gtFine/train",
                "gtFine/val",
            ],
            InputKind::Ade20k => &[
                "images/training",
                "images/validation",
                "annotations/training",
                "annotations/validation",
            ],
            InputKind::Summer2Winter => &["trainA", "trainB", "testA", "testB"],
            _ => &[],
        }
    }
}

/// One input of a run: the key that names it, where it is looked for, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The spec key holding the path (`data.path`, `tsit.perceptual.vgg19.path`).
    pub key: String,
    /// The path the spec gives.
    pub path: PathBuf,
    /// What it must hold.
    pub kind: InputKind,
}

impl Input {
    /// An input at `path`, named by `key`.
    pub fn new(key: impl Into<String>, path: impl Into<PathBuf>, kind: InputKind) -> Self {
        Input {
            key: key.into(),
            path: path.into(),
            kind,
        }
    }

    /// What is missing: empty when the input is in place.
    pub fn missing(&self) -> Vec<String> {
        let markers = self.kind.markers();
        if markers.is_empty() {
            return if self.path.is_file() {
                vec![]
            } else {
                vec![self.path.display().to_string()]
            };
        }
        if !self.path.is_dir() {
            return vec![format!("{}/", self.path.display())];
        }
        // ADE20K may sit one level down, as its zip unpacks.
        let base =
            if self.kind == InputKind::Ade20k && self.path.join("ADEChallengeData2016").is_dir() {
                self.path.join("ADEChallengeData2016")
            } else {
                self.path.clone()
            };
        markers
            .iter()
            .filter(|m| {
                let p = base.join(m);
                let gz = base.join(format!("{m}.gz"));
                !(p.exists() || (self.kind == InputKind::Idx && gz.is_file()))
            })
            .map(|m| base.join(m).display().to_string())
            .collect()
    }

    /// The message for a missing input: what it is, the layout, where to get it, the key.
    pub fn explain(&self, missing: &[String]) -> String {
        let first = missing.first().map_or("", String::as_str);
        let more = match missing.len() {
            0 | 1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        format!(
            "{} not found: no {first}{more}. Expected at {} ({}): {}. Get it: {}.",
            self.kind.what(),
            self.path.display(),
            self.key,
            self.kind.layout(),
            self.kind.source(),
        )
    }

    /// `Ok` when the input is in place, else the error of [`Input::explain`].
    pub fn check(&self) -> Result<()> {
        let missing = self.missing();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Data(format!(
                "{} Point `{}` elsewhere if it is in another place.",
                self.explain(&missing),
                self.key
            )))
        }
    }
}

/// The input a `data:` section (at `key`, e.g. `data` or `robust-transfer.transfer.targets.0.data`)
/// reads from its `path`, if its dataset is one reprise cannot fetch.
pub fn of_data(key: &str, d: &DataSpec) -> Option<Input> {
    let kind = match d.dataset.as_str() {
        "cifar10" => InputKind::Cifar10,
        "cifar100" => InputKind::Cifar100,
        "mnist-idx" | "fashion-mnist" => InputKind::Idx,
        "imagefolder" => InputKind::ImageFolder,
        "cityscapes" => InputKind::Cityscapes,
        "ade20k" => InputKind::Ade20k,
        "summer2winter" => InputKind::Summer2Winter,
        _ => return None,
    };
    let path = d.path.clone().unwrap_or_default();
    Some(Input::new(format!("{key}.path"), path, kind))
}

/// Checks every input, returning one error that lists all that are missing.
pub fn check_all(inputs: &[Input]) -> Result<()> {
    let errors: Vec<String> = inputs
        .iter()
        .filter_map(|i| i.check().err().map(|e| e.to_string()))
        .collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(Error::Data(
            errors[0].trim_start_matches("data: ").to_string(),
        )),
        n => Err(Error::Data(format!(
            "{n} inputs are missing (`runner data --check <experiment>` lists them):\n  {}",
            errors
                .iter()
                .map(|e| e.trim_start_matches("data: "))
                .collect::<Vec<_>>()
                .join("\n  ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_dataset_says_what_where_how_and_which_key() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cifar");
        let i = Input::new("data.path", &root, InputKind::Cifar10);
        let e = i.check().unwrap_err().to_string();
        for needle in [
            "CIFAR-10 (binary version) not found",
            "data_batch_1.bin",
            "cs.toronto.edu",
            "`data.path`",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        std::fs::create_dir_all(&root).unwrap();
        for f in ["data_batch_1.bin", "data_batch_2.bin"] {
            std::fs::write(root.join(f), b"").unwrap();
        }
        let missing = i.missing();
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(i.explain(&missing).contains("and 3 more"));
        for f in [
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ] {
            std::fs::write(root.join(f), b"").unwrap();
        }
        assert!(i.check().is_ok());
    }

    #[test]
    fn ade20k_may_sit_in_its_zips_folder_and_weights_are_files() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("ade/ADEChallengeData2016");
        for s in [
            "images/training",
            "images/validation",
            "annotations/training",
            "annotations/validation",
        ] {
            std::fs::create_dir_all(base.join(s)).unwrap();
        }
        assert!(
            Input::new("data.path", d.path().join("ade"), InputKind::Ade20k)
                .check()
                .is_ok()
        );
        let w = Input::new(
            "tsit.perceptual.vgg19.path",
            d.path().join("vgg.safetensors"),
            InputKind::Vgg19,
        );
        let e = w.check().unwrap_err().to_string();
        assert!(
            e.contains("VGG-19") && e.contains("tsit.perceptual.vgg19.path"),
            "{e}"
        );
        std::fs::write(d.path().join("vgg.safetensors"), b"x").unwrap();
        assert!(w.check().is_ok());
        let two = [
            Input::new("a", d.path().join("none1"), InputKind::Cifar100),
            Input::new("b", d.path().join("none2"), InputKind::Summer2Winter),
        ];
        let e = check_all(&two).unwrap_err().to_string();
        assert!(
            e.contains("2 inputs are missing") && e.contains("CIFAR-100") && e.contains("summer"),
            "{e}"
        );
    }

    #[test]
    fn fetchable_and_synthetic_datasets_are_no_inputs() {
        let d: DataSpec =
            serde_json::from_value(serde_json::json!({ "dataset": "digits" })).unwrap();
        assert!(of_data("data", &d).is_none());
        let d: DataSpec =
            serde_json::from_value(serde_json::json!({ "dataset": "cifar10", "path": "x" }))
                .unwrap();
        assert_eq!(of_data("data", &d).unwrap().key, "data.path");
    }
}
