//! Import of the published DS-CNN weights (`ds_cnn_{s,m,l}.safetensors`, TensorFlow layouts).

use burn::module::{Param, RunningState};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

use crate::dscnn::{DsCnn, DsCnnConfig};
use crate::{ConvBlock, ModelError};

struct Weights<'a> {
    file: String,
    tensors: SafeTensors<'a>,
    device: Device,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let err = |reason: String| ModelError::Weights {
            file: self.file.clone(),
            reason,
        };
        let view = self.tensors.tensor(name).map_err(|_| {
            err(format!(
                "tensor `{name}` is missing; is this the weight file of this DS-CNN size?"
            ))
        })?;
        if view.shape() != shape {
            return Err(err(format!(
                "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                view.shape()
            )));
        }
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(err(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn vector(&self, name: &str, n: usize) -> Result<Tensor<1>, ModelError> {
        Ok(Tensor::from_data(
            TensorData::new(self.get(name, &[n])?, [n]),
            &self.device,
        ))
    }

    /// A TF HWIO kernel `[kh, kw, in, out]` (or depthwise `[kh, kw, in, 1]`) into burn's
    /// `[out, in/groups, kh, kw]`.
    fn kernel(
        &self,
        name: &str,
        tf_shape: [usize; 4],
        depthwise: bool,
    ) -> Result<Tensor<4>, ModelError> {
        let data = self.get(name, &tf_shape)?;
        let t = Tensor::<4>::from_data(TensorData::new(data, tf_shape), &self.device);
        Ok(if depthwise {
            t.permute([2, 3, 0, 1]) // [in, 1, kh, kw]
        } else {
            t.permute([3, 2, 0, 1]) // [out, in, kh, kw]
        })
    }

    /// Fill a conv + BN block from `scope` (`MobileNet/conv_1`, or a depthwise / pointwise part).
    fn block(
        &self,
        block: ConvBlock,
        weights: &str,
        bias: &str,
        bn: &str,
        tf_shape: [usize; 4],
        depthwise: bool,
    ) -> Result<ConvBlock, ModelError> {
        let mut block = block;
        let out = if depthwise { tf_shape[2] } else { tf_shape[3] };
        // Materialise the permuted view so the convolution reads contiguous memory.
        let w = self.kernel(weights, tf_shape, depthwise)?;
        let w = Tensor::<4>::from_data(w.into_data(), &self.device);
        block.conv.weight = Param::from_tensor(w);
        let b = self.vector(bias, out)?;
        block.conv.bias = Some(Param::from_tensor(b));
        // slim's batch_norm(scale=False): gamma is a constant 1, not trained.
        let gamma = self.vector(&format!("{bn}/Const"), out)?;
        block.bn.gamma = Param::from_tensor(gamma).set_require_grad(false);
        block.bn.beta = Param::from_tensor(self.vector(&format!("{bn}/beta"), out)?);
        block.bn.running_mean = RunningState::new(self.vector(&format!("{bn}/moving_mean"), out)?);
        block.bn.running_var =
            RunningState::new(self.vector(&format!("{bn}/moving_variance"), out)?);
        Ok(block)
    }
}

/// Build `config`'s DS-CNN with the published weights in `bytes` (a `ds_cnn_*.safetensors`
/// file; `file` names it in errors). BatchNorm γ is fixed at 1 (not trainable) as published.
pub fn ds_cnn(
    config: &DsCnnConfig,
    bytes: &[u8],
    file: &str,
    device: &Device,
) -> Result<DsCnn<ConvBlock, Linear>, ModelError> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights {
        file: file.to_string(),
        reason: format!("not a safetensors file ({e})"),
    })?;
    let w = Weights {
        file: file.to_string(),
        tensors,
        device: device.clone(),
    };
    let mut model = config.init(device)?;
    let c = model.fc.weight.dims()[0];
    let classes = model.fc.weight.dims()[1];
    model.conv1 = w.block(
        model.conv1,
        "MobileNet/conv_1/weights",
        "MobileNet/conv_1/biases",
        "MobileNet/conv_1/batch_norm",
        [10, 4, 1, c],
        false,
    )?;
    let mut blocks = Vec::new();
    for (i, b) in std::mem::take(&mut model.blocks).into_iter().enumerate() {
        let s = format!("MobileNet/conv_ds_{}", i + 1);
        let dw = w.block(
            b.dw,
            &format!("{s}/depthwise_conv/depthwise_weights"),
            &format!("{s}/depthwise_conv/biases"),
            &format!("{s}/dw_batch_norm"),
            [3, 3, c, 1],
            true,
        )?;
        let pw = w.block(
            b.pw,
            &format!("{s}/pointwise_conv/weights"),
            &format!("{s}/pointwise_conv/biases"),
            &format!("{s}/pw_batch_norm"),
            [1, 1, c, c],
            false,
        )?;
        blocks.push(crate::DsBlock { dw, pw });
    }
    model.blocks = blocks;
    let fc_w = Tensor::<2>::from_data(
        TensorData::new(w.get("MobileNet/fc1/weights", &[c, classes])?, [c, classes]),
        device,
    );
    model.fc.weight = Param::from_tensor(fc_w);
    model.fc.bias = Some(Param::from_tensor(
        w.vector("MobileNet/fc1/biases", classes)?,
    ));
    Ok(model)
}
