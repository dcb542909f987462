//! Helpers shared by the integration tests: a plain float64 reference of every batch-norm
//! operation ([`reference`]), a plain reference of the dropout family and its generator
//! ([`dropout_reference`]), a small deterministic data generator ([`data`]), the property
//! tests' configuration ([`prop`]) and bf16 and f16 as the half-precision tests see them
//! ([`half`]), and the arena of sentinel bytes that the C-contract tests put every buffer of a
//! call in ([`arena`]).

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

pub mod arena;
pub mod backward_reference;
pub mod check;
pub mod data;
pub mod dropout_reference;
pub mod group_reference;
pub mod half;
pub mod layer_reference;
pub mod prop;
pub mod reference;
