//! Whole models: wrapping every weight of an unmodified burn model through burn's parameter
//! reparameterization.
//!
//! The layer decorators (`Prunable<L>`, `Clustered<L>`, `QatAware<L>`) need the wrapper types
//! written into the model struct. A model whose types cannot change is wrapped instead through
//! burn 0.22's [`Reparameterization`]: a module attached to a `Param`, so that `param.val()`
//! returns `apply(base)`. Unmodified burn layers then compute with the effective weight, and the
//! attached module's own parameters and state are visited like any others: saved in the record
//! under `<param path>.<NAME>.<field>`, moved by `to_device`, seen by the optimizer.
//!
//! This module holds what the three wrapper crates share (`collab_prune::whole`,
//! `collab_cluster::whole`, `collab_quant::whole`):
//! - [`plan`]: which weights a [`Selection`] picks, each as a [`WeightSite`] (path, layer type,
//!   shape, output-channel axis), and which are left as is and why;
//! - [`attach`]: attach one prepared reparameterization per selected path;
//! - [`scan`] and [`write_state`]: read and replace the state of attached reparameterizations
//!   (step counters, masks) from outside, since a `ModuleVisitor` / `ModuleMapper` sees a
//!   reparameterized parameter only as its base followed by the attached module's fields;
//! - [`report`]: zeros and distinct values of every wrapped weight; [`strip`]: bake the
//!   effective weights into the plain model.
//!
//! See `docs/DESIGN.md` ("Whole models") for what a model must satisfy and the limits.

use std::collections::BTreeMap;

use burn::module::{
    Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId, Reparameterization,
    Reparameterizer,
};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::Serialize;

use crate::host::{distinct_count, to_vec_f32};
use crate::{ChannelView, CoreError, LayerKind, WeightLayout};

/// The container type burn reports for an attached reparameterization.
const REPARAMETERIZATION: &str = "Reparameterization";

/// The output-channel axis of the weight of a burn layer, by the layer's struct name and the
/// parameter's field name; `None` for anything else.
///
/// `Linear` and `Embedding` store `[d_input, d_output]` (an embedding is a linear layer on
/// one-hot inputs), convolutions `[out, in / groups, k..]`, transposed convolutions
/// `[in, out / groups, k..]`. The `Linear` layers inside `MultiHeadAttention`, `Lstm`, `Gru`
/// and the transformer blocks are found as `Linear`.
pub fn known_channel_axis(layer: &str, field: &str, rank: usize) -> Option<usize> {
    if field != "weight" {
        return None;
    }
    match layer {
        "Linear" | "Embedding" if rank == 2 => Some(1),
        "Conv1d" | "Conv2d" | "Conv3d" | "DeformConv2d" if rank >= 3 => Some(0),
        "ConvTranspose1d" | "ConvTranspose2d" | "ConvTranspose3d" if rank >= 3 => Some(1),
        _ => None,
    }
}

/// A weight parameter of a model, as the whole-model wrappers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WeightSite {
    /// Dotted path in the model (`blocks.0.conv.weight`), as burn's records name it.
    pub path: String,
    /// The struct holding the parameter (`Linear`, `Conv2d`, or the user's own type).
    pub layer: String,
    /// The parameter's shape.
    pub shape: Vec<usize>,
    /// Axis of the output channels: known for burn's layers ([`known_channel_axis`]) or declared
    /// with [`Selection::with_channel_axis`]; `None` when unknown (per-tensor settings only).
    pub channel_axis: Option<usize>,
}

impl WeightSite {
    /// Number of weights.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the shared code sees this weight with its first two axes swapped: output
    /// channels on axis 1 of a rank-3+ weight (transposed convolutions).
    pub fn swapped(&self) -> bool {
        self.channel_axis == Some(1) && self.shape.len() > 2
    }

    /// The weight as the shared mask / k-means / fake-quant code sees it: a `Linear` layout for
    /// rank 2 with output channels on axis 1, otherwise a convolution layout (output channels
    /// first, after [`to_view`](Self::to_view)). Convolution groups are not visible from a
    /// parameter; they are reported as 1.
    pub fn layout(&self) -> WeightLayout {
        let mut shape = self.shape.clone();
        if self.swapped() {
            shape.swap(0, 1);
        }
        let kind = match (shape.len(), self.channel_axis) {
            (2, Some(0)) => LayerKind::Conv1d,
            (0..=2, _) => LayerKind::Linear,
            (3, _) => LayerKind::Conv1d,
            _ => LayerKind::Conv2d,
        };
        if shape.len() < 2 {
            shape.resize(2, 1);
        }
        WeightLayout {
            kind,
            shape,
            groups: 1,
        }
    }

    /// The per-channel or per-tensor `[rows, cols]` view of [`layout`](Self::layout); per
    /// channel needs a known output-channel axis.
    pub fn channel_view(&self, per_channel: bool) -> Result<ChannelView, CoreError> {
        if per_channel && self.channel_axis.is_none() {
            return Err(self.unknown_axis("per-channel settings"));
        }
        Ok(ChannelView::new(&self.layout(), per_channel))
    }

    /// The error for an operation that needs the output-channel axis of this weight.
    pub fn unknown_axis(&self, needs: &str) -> CoreError {
        CoreError::ChannelAxis {
            path: self.path.clone(),
            layer: self.layer.clone(),
            reason: format!(
                "{needs} need the output-channel axis, which is known only for burn's Linear, \
                 Embedding and (transposed) convolution weights; declare it with \
                 Selection::with_channel_axis(\"{}\", axis), exclude the parameter from the \
                 selection, or use per-tensor settings",
                self.path
            ),
        }
    }

    /// A tensor of this weight's shape in [`layout`](Self::layout) order (axes 0 and 1 swapped
    /// when [`swapped`](Self::swapped)). Its own inverse.
    pub fn to_view<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        if self.swapped() && D > 2 {
            weight.swap_dims(0, 1)
        } else {
            weight
        }
    }

    /// Host values flattened in the parameter's order → [`layout`](Self::layout) order.
    pub fn view_order<T: Copy>(&self, values: &[T]) -> Vec<T> {
        self.permute(values, false)
    }

    /// Host values flattened in [`layout`](Self::layout) order → the parameter's order.
    pub fn param_order<T: Copy>(&self, values: &[T]) -> Vec<T> {
        self.permute(values, true)
    }

    fn permute<T: Copy>(&self, values: &[T], back: bool) -> Vec<T> {
        if !self.swapped() {
            return values.to_vec();
        }
        let (a, b) = (self.shape[0], self.shape[1]);
        let rest: usize = self.shape[2..].iter().product();
        let mut out = values.to_vec();
        for i in 0..a {
            for j in 0..b {
                let param = (i * b + j) * rest;
                let view = (j * a + i) * rest;
                let (from, to) = if back { (view, param) } else { (param, view) };
                out[to..to + rest].copy_from_slice(&values[from..from + rest]);
            }
        }
        out
    }

    /// A description such as `Conv2d [8, 4, 3, 3]`.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.layer, self.shape)
    }
}

/// Which weights of a model a whole-model wrapper takes.
///
/// Default: every float parameter of rank 2 or more (the weights of `Linear`, `Conv1d`/`2d`/`3d`,
/// `ConvTranspose*`, `Embedding`, and the `Linear` layers inside `MultiHeadAttention`, `Lstm`,
/// `Gru`, …, and any rank-2+ parameter of the user's own types). Rank-0/1 parameters (biases,
/// normalization scales and shifts) are always left as is.
#[derive(Clone, Debug)]
pub struct Selection {
    params: ParamGroup,
    channel_axes: BTreeMap<String, usize>,
}

impl Default for Selection {
    fn default() -> Self {
        Self::all()
    }
}

impl Selection {
    /// Every rank-2+ float parameter.
    pub fn all() -> Self {
        Self {
            params: ParamGroup::all(),
            channel_axes: BTreeMap::new(),
        }
    }

    /// The rank-2+ float parameters that burn's [`ParamGroup`] matches: by exact paths
    /// (`ParamGroup::from_paths`), substrings (`from_predicate`), ids, or with exclusions
    /// (`ParamGroup::all().exclude(..)`).
    pub fn only(params: ParamGroup) -> Self {
        Self {
            params,
            channel_axes: BTreeMap::new(),
        }
    }

    /// Declare the output-channel axis of the parameter at `path` (a weight of a layer type
    /// this crate does not know), so that per-channel settings can apply to it.
    pub fn with_channel_axis(mut self, path: &str, axis: usize) -> Self {
        self.channel_axes.insert(path.to_string(), axis);
        self
    }

    /// `site` with the channel axis declared for its path, if any.
    pub fn refine(&self, mut site: WeightSite) -> WeightSite {
        if let Some(axis) = self.channel_axes.get(&site.path) {
            site.channel_axis = Some(*axis);
        }
        site
    }

    fn site(&self, found: &FoundParam) -> WeightSite {
        let rank = found.shape.len();
        let channel_axis = match self.channel_axes.get(&found.path) {
            Some(axis) => Some(*axis),
            None => known_channel_axis(&found.layer, &found.field, rank),
        };
        WeightSite {
            path: found.path.clone(),
            layer: found.layer.clone(),
            shape: found.shape.clone(),
            channel_axis,
        }
    }

    fn check_axes(&self, found: &[FoundParam]) -> Result<(), CoreError> {
        for (path, axis) in &self.channel_axes {
            let Some(param) = found.iter().find(|p| &p.path == path) else {
                return Err(CoreError::ChannelAxis {
                    path: path.clone(),
                    layer: "?".into(),
                    reason: "no float parameter has this path; paths are dotted field names \
                             as in the record (e.g. `encoder.proj.weight`)"
                        .into(),
                });
            };
            if *axis >= param.shape.len().min(2) {
                return Err(CoreError::ChannelAxis {
                    path: path.clone(),
                    layer: param.layer.clone(),
                    reason: format!(
                        "axis {axis} for a weight of shape {:?}: the output channels must be \
                         on axis 0 or 1 (and the weight of rank 2 or more)",
                        param.shape
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A weight chosen by [`plan`], with its current (base) value.
#[derive(Clone, Debug)]
pub struct Selected {
    /// Where and what it is.
    pub site: WeightSite,
    /// The stored weight, flattened in the parameter's order, `[numel]`.
    pub value: Tensor<1>,
}

/// A float parameter a whole-model wrapper leaves unchanged, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftAsIs {
    /// Dotted path.
    pub path: String,
    /// The struct holding it.
    pub layer: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Why it is not wrapped.
    pub reason: String,
}

/// What a whole-model wrapper took: the wrapped weights, and every other float parameter with
/// the reason it was left as is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Wrapped {
    /// The wrapped weights, in traversal order.
    pub wrapped: Vec<WeightSite>,
    /// Float parameters left unchanged.
    pub left_as_is: Vec<LeftAsIs>,
}

/// The weights of `model` that `selection` picks, and the float parameters it leaves.
///
/// Fails when a parameter already carries a reparameterization (burn does not nest them:
/// [`strip`] the model first), when a declared channel axis names no parameter, or when
/// nothing is selected.
pub fn plan<M: Module>(
    model: &M,
    selection: &Selection,
) -> Result<(Vec<Selected>, Wrapped), CoreError> {
    let found = scan_params(model);
    if let Some(p) = found.iter().find(|p| p.wrapper.is_some()) {
        return Err(CoreError::AlreadyWrapped {
            path: p.path.clone(),
            wrapper: p.wrapper.clone().unwrap_or_default(),
        });
    }
    selection.check_axes(&found)?;
    let mut selected = Vec::new();
    let mut summary = Wrapped::default();
    for param in &found {
        let reason = if param.shape.len() < 2 {
            Some(format!(
                "rank {} (a bias or normalization parameter)",
                param.shape.len()
            ))
        } else if !selection.params.matches(&param.id, Some(&param.path)) {
            Some("not in the selection".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => summary.left_as_is.push(LeftAsIs {
                path: param.path.clone(),
                layer: param.layer.clone(),
                shape: param.shape.clone(),
                reason,
            }),
            None => {
                let site = selection.site(param);
                summary.wrapped.push(site.clone());
                selected.push(Selected {
                    site,
                    value: param.value.clone(),
                });
            }
        }
    }
    if selected.is_empty() {
        return Err(CoreError::NothingSelected {
            params: found.len(),
        });
    }
    Ok((selected, summary))
}

/// Attach `states[path]` to the float parameter at each `path`; parameters without an entry
/// are unchanged. The paths come from [`plan`] on the same model.
pub fn attach<M: Module, R: Reparameterization>(model: M, mut states: BTreeMap<String, R>) -> M {
    let model = model.apply_reparameterization(Attach {
        states: &mut states,
    });
    debug_assert!(states.is_empty(), "unattached: {:?}", states.keys());
    model
}

struct Attach<'a, R> {
    states: &'a mut BTreeMap<String, R>,
}

impl<R: Reparameterization> Reparameterizer for Attach<'_, R> {
    type Reparam = R;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<R>) {
        (param, self.states.remove(path))
    }
}

/// A value of an attached reparameterization's state, flattened, with its shape.
#[derive(Clone, Debug)]
pub enum StateValue {
    /// A float tensor (trainable or state).
    Float(Tensor<1>, Vec<usize>),
    /// An int tensor (e.g. a step counter).
    Int(Tensor<1, Int>, Vec<usize>),
    /// A bool tensor (e.g. a mask).
    Bool(Tensor<1, Bool>, Vec<usize>),
}

impl StateValue {
    /// The float tensor, if this is one.
    pub fn float(&self) -> Option<Tensor<1>> {
        match self {
            Self::Float(t, _) => Some(t.clone()),
            _ => None,
        }
    }

    /// The int tensor, if this is one.
    pub fn int(&self) -> Option<Tensor<1, Int>> {
        match self {
            Self::Int(t, _) => Some(t.clone()),
            _ => None,
        }
    }

    /// The bool tensor, if this is one.
    pub fn bool(&self) -> Option<Tensor<1, Bool>> {
        match self {
            Self::Bool(t, _) => Some(t.clone()),
            _ => None,
        }
    }

    /// The shape before flattening.
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::Float(_, s) | Self::Int(_, s) | Self::Bool(_, s) => s,
        }
    }
}

/// A parameter carrying a reparameterization, as [`scan`] finds it.
#[derive(Clone, Debug)]
pub struct WrappedParam {
    /// Where and what it is (channel axis of burn's layers only).
    pub site: WeightSite,
    /// The reparameterization's `NAME` (`prune`, `cluster`, `qat`, `lora`, …).
    pub wrapper: String,
    /// The stored base weight, flattened in the parameter's order.
    pub base: Tensor<1>,
    /// The reparameterization's tensors by their dotted field path (`mask`, `step`, …).
    pub state: BTreeMap<String, StateValue>,
}

/// Every parameter of `model` that carries a reparameterization named `wrapper` (any, with
/// `None`), in traversal order, with its base weight and the reparameterization's tensors.
pub fn scan<M: Module>(model: &M, wrapper: Option<&str>) -> Vec<WrappedParam> {
    scan_params(model)
        .into_iter()
        .filter_map(|p| {
            let name = p.wrapper?;
            if wrapper.is_some_and(|w| w != name) {
                return None;
            }
            let rank = p.shape.len();
            Some(WrappedParam {
                site: WeightSite {
                    channel_axis: known_channel_axis(&p.layer, &p.field, rank),
                    path: p.path,
                    layer: p.layer,
                    shape: p.shape,
                },
                wrapper: name,
                base: p.value,
                state: p.state,
            })
        })
        .collect()
}

/// A float parameter outside any reparameterization.
struct FoundParam {
    id: ParamId,
    path: String,
    layer: String,
    field: String,
    shape: Vec<usize>,
    value: Tensor<1>,
    wrapper: Option<String>,
    state: BTreeMap<String, StateValue>,
}

#[derive(Default)]
struct Scanner {
    stack: Vec<(String, String)>,
    /// Stack depth at which the current reparameterization's fields start.
    inside: Option<usize>,
    found: Vec<FoundParam>,
}

impl Scanner {
    fn path(&self, from: usize) -> String {
        self.stack[from..]
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    fn state(&mut self, value: StateValue) {
        if let Some(start) = self.inside {
            let field = self.path(start);
            if let Some(last) = self.found.last_mut() {
                last.state.insert(field, value);
            }
        }
    }
}

fn flat<const D: usize, K: burn::tensor::kind::Basic>(t: Tensor<D, K>) -> Tensor<1, K> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

impl ModuleVisitor for Scanner {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
        if container_type == REPARAMETERIZATION && self.inside.is_none() {
            self.inside = Some(self.stack.len());
            if let Some(last) = self.found.last_mut() {
                last.wrapper = Some(name.to_string());
            }
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type == REPARAMETERIZATION && self.inside == Some(self.stack.len()) {
            self.inside = None;
        }
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        if self.inside.is_some() {
            self.state(StateValue::Float(flat(value), shape));
            return;
        }
        let (field, container) = self.stack.last().cloned().unwrap_or_default();
        self.found.push(FoundParam {
            id: param.id,
            path: self.path(0),
            layer: container
                .strip_prefix("Struct:")
                .unwrap_or(&container)
                .to_string(),
            field,
            shape,
            value: flat(value),
            wrapper: None,
            state: BTreeMap::new(),
        });
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        self.state(StateValue::Int(flat(value), shape));
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        self.state(StateValue::Bool(flat(value), shape));
    }
}

fn scan_params<M: Module>(model: &M) -> Vec<FoundParam> {
    let mut scanner = Scanner::default();
    model.visit(&mut scanner);
    scanner.found
}

/// New values for the state of attached reparameterizations: parameter path → field path →
/// value (flattened; reshaped to the field's shape when written).
pub type StateUpdates = BTreeMap<String, BTreeMap<String, StateValue>>;

/// Replace state tensors of the reparameterizations named `wrapper`. Ids, devices and shapes are
/// kept; a value of the wrong kind or size is an error naming the field.
pub fn write_state<M: Module>(
    model: M,
    wrapper: &str,
    updates: StateUpdates,
) -> Result<M, CoreError> {
    let mut writer = Writer {
        wrapper,
        stack: Vec::new(),
        inside: None,
        updates,
        error: None,
    };
    let model = model.map(&mut writer);
    match writer.error {
        Some(err) => Err(err),
        None => Ok(model),
    }
}

struct Writer<'a> {
    wrapper: &'a str,
    stack: Vec<String>,
    /// `(parameter path, stack depth where its fields start)` inside a matching wrapper.
    inside: Option<(String, usize)>,
    updates: StateUpdates,
    error: Option<CoreError>,
}

impl Writer<'_> {
    fn take(&mut self) -> Option<(String, StateValue)> {
        let (param, start) = self.inside.as_ref()?;
        let field = self.stack[*start..].join(".");
        let value = self.updates.get_mut(param)?.remove(&field)?;
        Some((format!("{param}.{}.{field}", self.wrapper), value))
    }

    fn check(&mut self, what: &str, expected: &[usize], got: &[usize], kind_ok: bool) -> bool {
        if kind_ok && expected.iter().product::<usize>() == got.iter().product::<usize>() {
            return true;
        }
        self.error.get_or_insert(CoreError::Shape {
            what: format!("{what} (or a tensor of another kind)"),
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
        false
    }
}

impl ModuleMapper for Writer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == REPARAMETERIZATION && name == self.wrapper && self.inside.is_none() {
            self.inside = Some((self.stack.join("."), self.stack.len() + 1));
        }
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, name: &str, container_type: &str) {
        self.stack.pop();
        if container_type == REPARAMETERIZATION
            && name == self.wrapper
            && self
                .inside
                .as_ref()
                .is_some_and(|(_, start)| *start == self.stack.len() + 1)
        {
            self.inside = None;
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((what, value)) = self.take() else {
            return param;
        };
        let current = param.val();
        let dims = current.dims();
        match value {
            StateValue::Float(t, shape) if self.check(&what, &dims, &shape, true) => {
                let t = t.to_device(&current.device()).reshape(dims);
                let t = t.set_require_grad(current.is_require_grad());
                Param::initialized(param.id, t)
            }
            other => {
                self.check(&what, &dims, other.shape(), false);
                param
            }
        }
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let Some((what, value)) = self.take() else {
            return param;
        };
        let current = param.val();
        let dims = current.dims();
        match value {
            StateValue::Int(t, shape) if self.check(&what, &dims, &shape, true) => {
                Param::initialized(param.id, t.to_device(&current.device()).reshape(dims))
            }
            other => {
                self.check(&what, &dims, other.shape(), false);
                param
            }
        }
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        let Some((what, value)) = self.take() else {
            return param;
        };
        let current = param.val();
        let dims = current.dims();
        match value {
            StateValue::Bool(t, shape) if self.check(&what, &dims, &shape, true) => {
                Param::initialized(param.id, t.to_device(&current.device()).reshape(dims))
            }
            other => {
                self.check(&what, &dims, other.shape(), false);
                param
            }
        }
    }
}

/// An int state value of one element (a step counter) on `device`.
pub fn int_scalar(value: i64, device: &burn::tensor::Device) -> StateValue {
    StateValue::Int(
        Tensor::from_data(TensorData::new(vec![value], [1]), device),
        vec![1],
    )
}

/// Figures of one wrapped weight, from its effective value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightStats {
    /// Dotted path.
    pub path: String,
    /// The struct holding it (`Linear`, `Conv2d`, …).
    pub layer: String,
    /// The reparameterization's name (`prune`, `cluster`, `qat`, …).
    pub wrapper: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Number of weights.
    pub weights: usize,
    /// Effective weights that are exactly 0.
    pub zeros: usize,
    /// `zeros / weights`.
    pub zeros_fraction: f64,
    /// Distinct effective values in the tensor (`-0.0` counts as `0.0`).
    pub unique_values: usize,
    /// Most distinct effective values in one output channel, when the channel axis is known.
    pub max_unique_per_channel: Option<usize>,
}

impl WeightStats {
    fn of(site: &WeightSite, wrapper: &str, values: &[f32]) -> Self {
        let zeros = values.iter().filter(|v| **v == 0.0).count();
        let max_unique_per_channel = site.channel_axis.map(|_| {
            let layout = site.layout();
            let view = ChannelView::new(&layout, true);
            let ordered = site.view_order(values);
            let mut rows: Vec<Vec<f32>> = vec![Vec::new(); view.rows];
            for (i, v) in ordered.iter().enumerate() {
                rows[view.row_of(&layout, i)].push(*v);
            }
            rows.iter().map(|r| distinct_count(r)).max().unwrap_or(0)
        });
        Self {
            path: site.path.clone(),
            layer: site.layer.clone(),
            wrapper: wrapper.to_string(),
            shape: site.shape.clone(),
            weights: values.len(),
            zeros,
            zeros_fraction: zeros as f64 / values.len().max(1) as f64,
            unique_values: distinct_count(values),
            max_unique_per_channel,
        }
    }
}

/// Zeros and distinct values of every parameter of `model` that carries a reparameterization
/// (any wrapper), computed from its effective value, in traversal order.
pub fn report<M: Module>(model: &M) -> Vec<WeightStats> {
    let wrapped = scan(model, None);
    if wrapped.is_empty() {
        return Vec::new();
    }
    let baked: BTreeMap<String, Tensor<1>> = scan_params(&strip(model.valid()))
        .into_iter()
        .map(|p| (p.path, p.value))
        .collect();
    wrapped
        .iter()
        .filter_map(|w| {
            let values = to_vec_f32(baked.get(&w.site.path)?.clone());
            Some(WeightStats::of(&w.site, &w.wrapper, &values))
        })
        .collect()
}

/// Bake: every reparameterized parameter becomes its effective value (mask applied, centroids
/// gathered, weights fake-quantized) and loses its reparameterization and state.
///
/// The result has the model's own type, device, parameter ids and trainability, and its record
/// loads into the plain (never wrapped) model. This is burn's [`Module::materialize`]; call
/// `model.valid()` first for an inference model.
pub fn strip<M: Module>(model: M) -> M {
    model.materialize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(shape: &[usize], axis: Option<usize>) -> WeightSite {
        WeightSite {
            path: "w".into(),
            layer: "ConvTranspose2d".into(),
            shape: shape.to_vec(),
            channel_axis: axis,
        }
    }

    #[test]
    fn swapped_view_orders_round_trip_and_match_swap_dims() {
        let s = site(&[2, 3, 2], Some(1));
        assert!(s.swapped());
        assert_eq!(s.layout().shape, vec![3, 2, 2]);
        let values: Vec<u32> = (0..12).collect();
        let view = s.view_order(&values);
        assert_eq!(s.param_order(&view), values);
        let device = burn::tensor::Device::flex();
        let t = Tensor::<3>::from_data(
            TensorData::new(values.iter().map(|v| *v as f32).collect(), [2, 3, 2]),
            &device,
        );
        let swapped = to_vec_f32(s.to_view(t));
        let expected: Vec<f32> = view.iter().map(|v| *v as f32).collect();
        assert_eq!(swapped, expected);
    }

    #[test]
    fn layouts_of_known_weights() {
        let linear = WeightSite {
            layer: "Linear".into(),
            ..site(&[4, 6], Some(1))
        };
        assert_eq!(linear.layout().kind, LayerKind::Linear);
        assert_eq!(linear.layout().out_channels(), 6);
        let conv = site(&[8, 4, 3, 3], Some(0));
        assert_eq!(conv.layout().kind, LayerKind::Conv2d);
        assert_eq!(conv.layout().out_channels(), 8);
        let embedding_rows = site(&[10, 4], Some(0));
        assert_eq!(embedding_rows.layout().out_channels(), 10);
        assert!(site(&[4, 4], None).channel_view(true).is_err());
        assert_eq!(known_channel_axis("Conv1d", "weight", 3), Some(0));
        assert_eq!(known_channel_axis("Linear", "bias", 1), None);
        assert_eq!(known_channel_axis("MyLayer", "weight", 2), None);
    }
}
