-- What caching and service tiers really cost, and replies cut off by max_output_tokens.
-- cache_write_tokens: input tokens written to the prompt cache (a part of input_tokens),
-- billed at the model's cache-write price. service_tier: the tier the upstream REPORTED
-- for the call ('' = none reported, priced as default). truncated: the answer's own call
-- ended "incomplete" (max_output_tokens), counted as a quality failure.
-- Defaults keep rows written before this migration valid (nothing was reported then).

ALTER TABLE answers ADD COLUMN cache_write_tokens bigint  NOT NULL DEFAULT 0;
ALTER TABLE answers ADD COLUMN truncated          boolean NOT NULL DEFAULT false;

ALTER TABLE charges ADD COLUMN cache_write_tokens bigint  NOT NULL DEFAULT 0;
ALTER TABLE charges ADD COLUMN service_tier       text    NOT NULL DEFAULT '';
ALTER TABLE charges ADD COLUMN truncated          boolean NOT NULL DEFAULT false;
