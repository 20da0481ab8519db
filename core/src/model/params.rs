//! Parameters by name. Burn's module visitors report each module they enter, so a stack of
//! names gives every parameter a stable dotted path (`h.0.attn.c_attn.weight`). Those paths
//! are GPT-2's weight names; checkpoints, optimizer state and the `info` table all use them.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Origin, Result};

/// One parameter's name, shape and element count.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ParamSummary {
    pub name: String,
    pub shape: Vec<usize>,
    pub numel: usize,
    /// Whether the optimizer updates it (meaningful on an autodiff device).
    pub trainable: bool,
}

/// What a pass over a module does with each float parameter, given its dotted path
/// (`h.0.attn.c_attn.weight`). Every parameter pass in tinytune (listing, loading,
/// gradients, optimizer updates, MeZO's perturbations, freezing) implements this or
/// [`MapNamed`] and leaves the path keeping to [`visit_named`] and [`map_named`]. A trait,
/// not a closure, because the pass is generic over the tensor's rank.
pub trait VisitNamed {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>);
}

/// [`VisitNamed`] for passes that replace parameters.
pub trait MapNamed {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>>;
}

/// The one walker: Burn's visitors report each module they enter, so a stack of names
/// gives every parameter its path.
struct Named<T> {
    path: Vec<String>,
    pass: T,
}

impl<T: VisitNamed> ModuleVisitor for Named<T> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.pass.visit(&self.path.join("."), param);
    }
}

impl<T: MapNamed> ModuleMapper for Named<T> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.pass.map(&self.path.join("."), param)
    }
}

/// Runs `pass` over every float parameter of `module`, in module order, and returns it.
pub fn visit_named<M: Module, V: VisitNamed>(module: &M, pass: V) -> V {
    let mut walker = Named { path: Vec::new(), pass };
    module.visit(&mut walker);
    walker.pass
}

/// Runs `pass` over every float parameter of `module`, replacing each with what it returns.
pub fn map_named<M: Module, F: MapNamed>(module: M, pass: F) -> (M, F) {
    let mut walker = Named { path: Vec::new(), pass };
    let module = module.map(&mut walker);
    (module, walker.pass)
}

/// Records every parameter's shape and, when asked, reads its values back to the host.
struct Walk {
    read_values: bool,
    out: Vec<(ParamSummary, Option<TensorData>)>,
}

impl VisitNamed for Walk {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        let shape = param.shape().dims::<D>().to_vec();
        let trainable = param.val().is_require_grad();
        let summary = ParamSummary { name: path.to_string(), numel: shape.iter().product(), shape, trainable };
        let values = self.read_values.then(|| param.val().to_data());
        self.out.push((summary, values));
    }
}

fn walk<M: Module>(module: &M, read_values: bool) -> Vec<(ParamSummary, Option<TensorData>)> {
    visit_named(module, Walk { read_values, out: Vec::new() }).out
}

/// Every float parameter of `module` with its dotted path, in module order.
pub fn named_params<M: Module>(module: &M) -> Vec<ParamSummary> {
    walk(module, false).into_iter().map(|(s, _)| s).collect()
}

/// Parameters the optimizer updates: the one count every table, log line and widget shows.
pub fn trainable_count<M: Module>(module: &M) -> usize {
    named_params(module).iter().filter(|p| p.trainable).map(|p| p.numel).sum()
}

/// Reads every float parameter back to the host, as `(path, data)`.
pub fn param_data<M: Module>(module: &M) -> Vec<(String, TensorData)> {
    walk(module, true).into_iter().map(|(s, d)| (s.name, d.expect("values were read"))).collect()
}

struct Load<'a> {
    tensors: &'a mut HashMap<String, TensorData>,
    origin: &'a Origin,
    errors: Vec<Error>,
}

impl MapNamed for Load<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = path.to_string();
        let want = param.shape().dims::<D>().to_vec();
        match self.tensors.remove(&name) {
            None => {
                self.errors.push(Error::tensor(self.origin.clone(), name, format!("missing (expected shape {want:?})")));
                param
            }
            Some(data) if data.shape().to_vec() != want => {
                self.errors.push(Error::tensor(
                    self.origin.clone(),
                    name,
                    format!("has shape {:?} but the model's config.json implies {want:?}", data.shape().to_vec()),
                ));
                param
            }
            Some(data) => {
                let device = param.val().device();
                let require_grad = param.val().is_require_grad();
                let mut t = Tensor::<D>::from_data(data.convert::<f32>(), &device);
                if require_grad {
                    t = t.require_grad();
                }
                param.map(|_| t)
            }
        }
    }
}

/// Replaces every parameter of `module` with the tensor of the same name in `tensors`.
/// Every missing or mis-shaped tensor is an error that names it; tensors left over are
/// returned so the caller can decide whether they matter.
pub fn load_params<M: Module>(module: M, mut tensors: HashMap<String, TensorData>, origin: &Origin) -> Result<(M, Vec<String>)> {
    let (module, loader) = map_named(module, Load { tensors: &mut tensors, origin, errors: Vec::new() });
    if let Some(first) = loader.errors.into_iter().next() {
        return Err(first);
    }
    let mut rest: Vec<String> = tensors.into_keys().collect();
    rest.sort();
    Ok((module, rest))
}
