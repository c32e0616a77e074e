//! Build small ONNX models in code, for tests that need an operator configuration no fixture
//! has (dilations, ceil-mode pools, hostile tensors, unsupported operators).

use prost::Message;
use tract_onnx::pb::{self, type_proto};

/// A graph under construction: one float input `x`, nodes, initializers.
#[derive(Debug, Default)]
pub struct OnnxBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    input_shape: Vec<i64>,
    opset: i64,
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// Integer list.
    Ints(Vec<i64>),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f32),
    /// String.
    Str(&'static str),
}

impl OnnxBuilder {
    /// A model whose input `x` has `shape`, at the given opset.
    pub fn new(input_shape: &[i64], opset: i64) -> Self {
        OnnxBuilder {
            input_shape: input_shape.to_vec(),
            opset,
            ..Default::default()
        }
    }

    /// Add a float initializer.
    pub fn weight(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> &mut Self {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: data,
            ..Default::default()
        });
        self
    }

    /// Add an int64 initializer (shapes, axes, pads).
    pub fn ints(&mut self, name: &str, data: &[i64]) -> &mut Self {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: 7,
            int64_data: data.to_vec(),
            ..Default::default()
        });
        self
    }

    /// Add a node.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: &[(&str, Attr)],
    ) -> &mut Self {
        let attribute = attrs
            .iter()
            .map(|(name, a)| {
                let mut p = pb::AttributeProto {
                    name: name.to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::Ints(v) => {
                        p.ints = v.clone();
                        p.r#type = pb::attribute_proto::AttributeType::Ints as i32;
                    }
                    Attr::Int(v) => {
                        p.i = *v;
                        p.r#type = pb::attribute_proto::AttributeType::Int as i32;
                    }
                    Attr::Float(v) => {
                        p.f = *v;
                        p.r#type = pb::attribute_proto::AttributeType::Float as i32;
                    }
                    Attr::Str(v) => {
                        p.s = v.as_bytes().to_vec();
                        p.r#type = pb::attribute_proto::AttributeType::String as i32;
                    }
                }
                p
            })
            .collect();
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
        self
    }

    /// Add any initializer as it is (hostile declarations, other data types).
    pub fn tensor(&mut self, tensor: pb::TensorProto) -> &mut Self {
        self.initializers.push(tensor);
        self
    }

    /// Serialize, with `output` as the graph's output.
    pub fn encode(&self, output: &str) -> Vec<u8> {
        self.model(output).encode_to_vec()
    }

    /// The model as a protobuf, with `output` as the graph's output, for a test to change
    /// what the builder cannot say (graph inputs, value names, node order).
    pub fn model(&self, output: &str) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(pb::GraphProto {
                name: "test".into(),
                node: self.nodes.clone(),
                initializer: self.initializers.clone(),
                input: vec![value_info("x", Some(&self.input_shape))],
                output: vec![value_info(output, None)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A float tensor's name and, optionally, its shape.
pub fn value_info(name: &str, dims: Option<&[i64]>) -> pb::ValueInfoProto {
    let shape = dims.map(|dims| pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| pb::tensor_shape_proto::Dimension {
                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                ..Default::default()
            })
            .collect(),
    });
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
