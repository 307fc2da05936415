//! The component's exports: the WIT bindings and the adapter from them to a
//! [`CapacityType`]. Plugin authors never see this; [`export_capacity_type!`]
//! wires it up.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Once;

use crate::wire::{self, WireCommand};
use crate::{CapacityType, Context, Failure, Problem, Role, View};

#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "capacity-type",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_guest",
        default_bindings_module: "allot_sdk::__private::bindings",
        runtime_path: "allot_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::allot::capacity::types as wit;
use bindings::exports::allot::capacity::decider;

/// Ties a [`CapacityType`] to the crate that exports it.
pub trait Export: 'static {
    /// The rules.
    type Type: CapacityType;
    /// The plugin crate's name.
    const NAME: &'static str;
    /// The plugin crate's version.
    const VERSION: &'static str;
}

/// Implements the exported `decider` interface for an [`Export`].
pub struct Guest<E>(PhantomData<E>);

/// The `pool` resource: one pool's state inside the component instance.
pub struct Pool<E: Export> {
    state: RefCell<<E::Type as CapacityType>::State>,
}

impl<E: Export> Pool<E> {
    fn resource(state: <E::Type as CapacityType>::State) -> decider::Pool {
        decider::Pool::new(Self {
            state: RefCell::new(state),
        })
    }
}

impl<E: Export> decider::Guest for Guest<E> {
    type Pool = Pool<E>;

    fn describe() -> wit::Info {
        wit::Info {
            name: E::NAME.to_owned(),
            version: E::VERSION.to_owned(),
            capacity_type: E::Type::CAPACITY_TYPE.to_owned(),
            state_version: E::Type::STATE_VERSION,
        }
    }
}

impl<E: Export> decider::GuestPool for Pool<E> {
    fn create(config: String) -> Result<decider::Pool, wit::Problem> {
        report_panics_to_host();
        wire::create::<E::Type>(&config)
            .map(Self::resource)
            .map_err(Into::into)
    }

    fn restore(snapshot: wit::Snapshot) -> Result<decider::Pool, wit::Problem> {
        report_panics_to_host();
        wire::restore::<E::Type>(snapshot.state_version, &snapshot.bytes)
            .map(Self::resource)
            .map_err(Into::into)
    }

    fn decide(
        &self,
        context: wit::Context,
        command: wit::Command,
    ) -> Result<Vec<String>, wit::Failure> {
        let command = wire::parse_command::<E::Type>(command.into())?;
        let state = self.state.borrow();
        let events = wire::decide::<E::Type>(&state, &context.into(), command)?;
        Ok(events.iter().map(wire::encode_event::<E::Type>).collect())
    }

    fn apply(&self, event: String) -> Result<(), wit::Problem> {
        let event = wire::decode_event::<E::Type>(&event)?;
        E::Type::apply(&mut self.state.borrow_mut(), event);
        Ok(())
    }

    fn snapshot(&self) -> wit::Snapshot {
        wit::Snapshot {
            state_version: E::Type::STATE_VERSION,
            bytes: wire::snapshot::<E::Type>(&self.state.borrow()),
        }
    }

    fn view(&self) -> wit::View {
        E::Type::view(&self.state.borrow()).into()
    }
}

/// A panic becomes a trap that the host reports; routing the panic message
/// through the log import lets the host say *why* the plugin trapped.
fn report_panics_to_host() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            crate::log::error(&format!("panicked{location}: {payload}"));
        }));
    });
}

impl From<wit::Command> for WireCommand {
    fn from(command: wit::Command) -> Self {
        match command {
            wit::Command::Reserve(r) => WireCommand::Reserve {
                id: r.id,
                request: r.request,
            },
            wit::Command::Release(id) => WireCommand::Release { id },
            wit::Command::Confirm(id) => WireCommand::Confirm { id },
            wit::Command::Custom(c) => WireCommand::Custom {
                name: c.name,
                payload: c.payload,
            },
        }
    }
}

impl From<wit::Context> for Context {
    fn from(context: wit::Context) -> Self {
        Context {
            now_ms: context.now_ms,
            request_id: context.request_id,
            role: match context.role {
                wit::Role::Checkout => Role::Checkout,
                wit::Role::Planner => Role::Planner,
                wit::Role::Operator => Role::Operator,
                wit::Role::System => Role::System,
            },
        }
    }
}

impl From<Problem> for wit::Problem {
    fn from(problem: Problem) -> Self {
        wit::Problem {
            code: problem.code,
            message: problem.message,
        }
    }
}

impl From<Failure> for wit::Failure {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Invalid(p) => wit::Failure::Invalid(p.into()),
            Failure::Rejected(p) => wit::Failure::Rejected(p.into()),
        }
    }
}

impl From<View> for wit::View {
    fn from(view: View) -> Self {
        wit::View {
            cells: view
                .cells
                .into_iter()
                .map(|c| wit::Cell {
                    key: c.key,
                    labels: c
                        .labels
                        .into_iter()
                        .map(|(name, value)| wit::Label { name, value })
                        .collect(),
                    start_ms: c.start_ms,
                    end_ms: c.end_ms,
                    unit: c.unit,
                    capacity: c.capacity,
                    used: c.used,
                    held: c.held,
                    open: c.open,
                })
                .collect(),
            details: view.details.to_string(),
        }
    }
}
