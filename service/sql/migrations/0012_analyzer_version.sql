-- Each analysis records what produced it (e.g. "local/rules-2026.12+minilm-l6-int8"), so that
-- `sense reanalyze` can find what an older analyzer scored. Not indexed: the analysis update
-- stays HOT (migration 0009).
ALTER TABLE messages ADD COLUMN analyzer text;
