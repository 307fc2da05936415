//! A compiled capacity-type component whose contract has been checked.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::CapacityTypePre;
use super::instance::PoolInstance;
use super::{Engine, Error, Result};

/// Versions of the `allot:capacity` contract this host runs, newest first.
pub const ACCEPTED_CONTRACTS: &[&str] = &["1.0.0"];

const DECIDER: &str = "allot:capacity/decider@";

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginInfo {
    /// The plugin's name (its crate's name).
    pub name: String,
    /// Its version.
    pub version: String,
    /// The capacity type it implements.
    pub capacity_type: String,
    /// Its state layout version.
    pub state_version: u32,
}

/// A loaded plugin: compiled, linked and checked. Share it with `Arc`; every
/// pool of its type instantiates from it.
pub struct Plugin {
    engine: Engine,
    pre: CapacityTypePre<super::store::StoreState>,
    digest: String,
    contract: String,
    info: PluginInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("digest", &self.digest)
            .field("contract", &self.contract)
            .finish()
    }
}

impl Plugin {
    /// Compiles a component, checks that it is a capacity type for a contract
    /// this host accepts, and starts it once to read its info.
    #[tracing::instrument(skip_all, fields(bytes = bytes.len()))]
    pub fn load(engine: &Engine, bytes: &[u8]) -> Result<Arc<Self>> {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        check_header(bytes)?;
        let component = Component::new(engine.wasmtime(), bytes)
            .map_err(|e| Error::NotAComponent(format!("{e:#}")))?;
        let contract = contract_version(engine, &component)?;
        let pre = engine
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| Error::Link(format!("{e:#}")))?;
        let pre = CapacityTypePre::new(pre).map_err(|e| Error::Link(format!("{e:#}")))?;
        let mut plugin = Self {
            engine: engine.clone(),
            pre,
            digest,
            contract,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                capacity_type: String::new(),
                state_version: 0,
            },
        };
        plugin.info = PoolInstance::describe(&plugin).map_err(|e| Error::Start(e.to_string()))?;
        tracing::info!(
            name = %plugin.info.name,
            version = %plugin.info.version,
            capacity_type = %plugin.info.capacity_type,
            digest = %plugin.digest,
            "plugin loaded"
        );
        Ok(Arc::new(plugin))
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The SHA-256 of the component's bytes, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The contract version the component implements.
    pub fn contract(&self) -> &str {
        &self.contract
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn pre(&self) -> &CapacityTypePre<super::store::StoreState> {
        &self.pre
    }
}

/// Names the two common mistakes before the parser does, in words: a file
/// that is no wasm at all, and a core module built for a target without the
/// component model.
fn check_header(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE: &[u8] = &[1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        return Err(Error::NotAComponent(
            "the bytes do not start with the WebAssembly magic number; is this a .wasm file?"
                .into(),
        ));
    }
    if bytes.get(4..8) == Some(CORE_MODULE) {
        return Err(Error::NotAComponent(
            "this is a core WebAssembly module, not a component; build the plugin with \
             `--target wasm32-wasip2`"
                .into(),
        ));
    }
    Ok(())
}

/// Finds the decider the component exports and checks its version, so that a
/// component for another contract is refused with a message naming both
/// versions instead of a linker error.
fn contract_version(engine: &Engine, component: &Component) -> Result<String> {
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine.wasmtime()) {
        if let Some(version) = name.strip_prefix(DECIDER)
            && matches!(item.ty, ComponentItem::ComponentInstance(_))
        {
            return if ACCEPTED_CONTRACTS.contains(&version) {
                Ok(version.to_owned())
            } else {
                Err(Error::WrongContract {
                    found: version.to_owned(),
                })
            };
        }
        exports.push(name.to_owned());
    }
    Err(Error::NotACapacityType {
        exports: if exports.is_empty() {
            "nothing".into()
        } else {
            exports.join(", ")
        },
    })
}
