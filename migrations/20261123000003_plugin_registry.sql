-- The plugin registry: every component ever uploaded, by content digest, and
-- which one is active for each capacity type. Every node loads the active
-- versions' bytes from here, so all of them run the same rules.

CREATE TABLE plugins (
    -- sha256:<hex> of the component's bytes.
    digest         text PRIMARY KEY,
    capacity_type  text NOT NULL,
    name           text NOT NULL,
    version        text NOT NULL,
    -- The allot:capacity contract version it implements.
    contract       text NOT NULL,
    state_version  integer NOT NULL,
    component      bytea NOT NULL,
    uploaded_by    text NOT NULL,
    uploaded_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX plugins_by_type ON plugins (capacity_type, uploaded_at);

-- Activations in order; the latest row of a capacity type names its active
-- version. Rows are never changed, so the table is also the history.
CREATE TABLE plugin_activations (
    id             bigserial PRIMARY KEY,
    capacity_type  text NOT NULL,
    digest         text NOT NULL REFERENCES plugins (digest),
    activated_by   text NOT NULL,
    activated_at   timestamptz NOT NULL DEFAULT now(),
    -- `activate` or `rollback`.
    kind           text NOT NULL
);

CREATE INDEX plugin_activations_by_type ON plugin_activations (capacity_type, id);

-- An activation tells every node at commit, with the capacity type.
CREATE FUNCTION allot_notify_plugin_activation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('allot_plugin_activations', NEW.capacity_type);
    RETURN NULL;
END;
$$;

CREATE TRIGGER plugin_activations_notify
    AFTER INSERT ON plugin_activations
    FOR EACH ROW EXECUTE FUNCTION allot_notify_plugin_activation();
