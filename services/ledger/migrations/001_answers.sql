-- One row per answered message (canned and fallback included), keyed by the
-- request_id the router gave it; one row per upstream call in `charges`.
-- Money is integer nano-USD (USD x 10^9). `answer_day` is the UTC date of
-- `answered_at`, the day every report groups by.

CREATE TABLE answers (
    request_id               text        PRIMARY KEY,
    user_id                  text        NOT NULL,
    route                    smallint    NOT NULL,   -- coach.router.v1.Route number
    message_type             smallint    NOT NULL,   -- coach.router.v1.MessageType number
    model                    text        NOT NULL,   -- '' for canned and fallback answers
    latency_ms               bigint      NOT NULL,
    answered_at              timestamptz NOT NULL,
    answer_day               date        NOT NULL,
    -- totals over all the answer's charges (its own call and its upkeep)
    input_tokens             bigint      NOT NULL,
    cached_input_tokens      bigint      NOT NULL,
    output_tokens            bigint      NOT NULL,
    reasoning_tokens         bigint      NOT NULL,
    cost_usd_nanos           bigint      NOT NULL,
    unpriced                 boolean     NOT NULL,   -- some charge had no price
    -- what the baseline policy would have cost for this message
    baseline_input_tokens    bigint      NOT NULL,
    baseline_output_tokens   bigint      NOT NULL,
    baseline_model           text        NOT NULL,
    baseline_cost_usd_nanos  bigint      NOT NULL,
    recorded_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (answer_day = (answered_at AT TIME ZONE 'UTC')::date)
);

-- cost report and daily report by route
CREATE INDEX answers_day_route_model ON answers (answer_day, route, model);
-- daily report by user (keyset paging on (answer_day, user_id))
CREATE INDEX answers_day_user ON answers (answer_day, user_id);
-- CheckUserLimits: one user's answers today
CREATE INDEX answers_user_day ON answers (user_id, answer_day) INCLUDE (cost_usd_nanos);

CREATE TABLE charges (
    request_id           text     NOT NULL REFERENCES answers (request_id) ON DELETE CASCADE,
    seq                  smallint NOT NULL,          -- position in the record's charges
    purpose              text     NOT NULL,          -- 'answer' or upkeep, e.g. 'summary'
    model                text     NOT NULL,
    input_tokens         bigint   NOT NULL,
    cached_input_tokens  bigint   NOT NULL,
    output_tokens        bigint   NOT NULL,
    reasoning_tokens     bigint   NOT NULL,
    cost_usd_nanos       bigint   NOT NULL,
    unpriced             boolean  NOT NULL,
    -- copied from the answer so the cost report groups charges without a join
    route                smallint NOT NULL,
    answer_day           date     NOT NULL,
    PRIMARY KEY (request_id, seq)
);

CREATE INDEX charges_day_route_model ON charges (answer_day, route, model);
CREATE INDEX charges_unpriced ON charges (model) WHERE unpriced;
