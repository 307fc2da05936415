//! The boundary: JSON and postcard in, typed values out. The wasm exports and
//! the native test kit both go through here, so a test that passes natively
//! exercises the same (de)serialization the sandbox will.

use crate::{CapacityType, Command, Context, Failure, Problem};

/// A command as it crosses the boundary, before its JSON parts are parsed.
pub(crate) enum WireCommand {
    Reserve { id: String, request: String },
    Release { id: String },
    Confirm { id: String },
    Custom { name: String, payload: String },
}

pub(crate) fn create<T: CapacityType>(config: &str) -> Result<T::State, Problem> {
    let config: T::Config = serde_json::from_str(config)
        .map_err(|e| Problem::new("invalid_config", format!("config: {e}")))?;
    T::create(config)
}

pub(crate) fn restore<T: CapacityType>(
    state_version: u32,
    bytes: &[u8],
) -> Result<T::State, Problem> {
    if state_version != T::STATE_VERSION {
        return Err(Problem::new(
            "snapshot_version",
            format!(
                "snapshot has state version {state_version}, this plugin reads {}",
                T::STATE_VERSION
            ),
        ));
    }
    postcard::from_bytes(bytes).map_err(|e| Problem::new("snapshot_corrupt", e.to_string()))
}

pub(crate) fn snapshot<T: CapacityType>(state: &T::State) -> Vec<u8> {
    postcard::to_allocvec(state).expect("postcard serializes any serde type into a Vec")
}

pub(crate) fn parse_command<T: CapacityType>(
    command: WireCommand,
) -> Result<Command<T::Request, T::Command>, Failure> {
    Ok(match command {
        WireCommand::Reserve { id, request } => {
            let request = serde_json::from_str(&request)
                .map_err(|e| Failure::invalid("invalid_request", format!("request: {e}")))?;
            Command::Reserve { id, request }
        }
        WireCommand::Release { id } => Command::Release { id },
        WireCommand::Confirm { id } => Command::Confirm { id },
        WireCommand::Custom { name, payload } => {
            Command::Custom(parse_custom::<T>(&name, &payload)?)
        }
    })
}

/// Custom commands are parsed as serde's externally tagged enum, `{"name": payload}`,
/// so that authors write a plain `#[serde(rename_all = "snake_case")] enum`.
fn parse_custom<T: CapacityType>(name: &str, payload: &str) -> Result<T::Command, Failure> {
    let payload: serde_json::Value = serde_json::from_str(payload)
        .map_err(|e| Failure::invalid("invalid_command", format!("{name}: {e}")))?;
    let tagged = serde_json::Value::Object([(name.to_owned(), payload)].into_iter().collect());
    serde_json::from_value(tagged).map_err(|e| {
        let message = e.to_string();
        if message.starts_with(&format!("unknown variant `{name}`"))
            || message.contains("has no commands")
        {
            Failure::invalid(
                "unknown_command",
                format!("{} has no command `{name}`", T::CAPACITY_TYPE),
            )
        } else {
            Failure::invalid("invalid_command", format!("{name}: {message}"))
        }
    })
}

pub(crate) fn decide<T: CapacityType>(
    state: &T::State,
    context: &Context,
    command: Command<T::Request, T::Command>,
) -> Result<Vec<T::Event>, Failure> {
    match command {
        Command::Reserve { id, request } => {
            check_reservation_id(&id)?;
            T::reserve(state, context, &id, request)
        }
        Command::Release { id } => T::release(state, context, &id),
        Command::Confirm { id } => T::confirm(state, context, &id),
        Command::Custom(command) => T::command(state, context, command),
    }
}

fn check_reservation_id(id: &str) -> Result<(), Failure> {
    if id.is_empty() {
        return Err(Failure::invalid(
            "invalid_reservation_id",
            "the reservation id is empty",
        ));
    }
    Ok(())
}

pub(crate) fn encode_event<T: CapacityType>(event: &T::Event) -> String {
    serde_json::to_string(event).expect("events serialize to JSON")
}

pub(crate) fn decode_event<T: CapacityType>(event: &str) -> Result<T::Event, Problem> {
    serde_json::from_str(event).map_err(|e| Problem::new("invalid_event", format!("event: {e}")))
}
