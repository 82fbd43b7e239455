"""The API's recognition settings: their wire names, their enums, and one resolved value.

The camelCase names appear here and nowhere else in Python; `Rotate` is capitalised on the wire
as every official SDK sends it, and `rotate` is accepted from YAML as the docs spell it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Final

LANGUAGES: Final = tuple(
    [
        "English",
        "German",
        "French",
        "Italian",
        "Spanish",
        "Portuguese",
        "Polish",
        "Slovene",
        "Slovak",
        "Netherlands",
        "Lithuanian",
        "Latvian",
        "Danish",
        "Norwegian",
        "Finnish",
        "Serbian",
        "Croatian",
        "Czech",
        "Swedish",
        "Estonian",
        "Romanian",
        "Chinese",
        "Russian",
        "Arabic",
        "Hindi",
        "Ukrainan",
        "Bengali",
        "Tibetan",
        "Thai",
        "Urdu",
        "Turkish",
        "Korean",
        "Indonesian",
        "Hebrew",
        "Javanese",
        "Greek",
        "Japanese",
        "Persian",
        "Albanian",
        "Latin",
        "Vietnamese",
        "Uzbek",
        "Georgian",
        "Bulgarian",
        "Azerbaijani",
        "Kazah",
        "Macedonian",
        "Belorussian",
        "Malay",
        "Hausa",
        "Sundanese",
        "Swahili",
        "Tagalog",
        "Yoruba",
        "Oromo",
        "Cebuano",
        "Dutch",
        "Kurdish",
        "Serbo_Croatian",
        "Malagasy",
        "Zhuang",
        "Turkmen",
        "Somali",
        "Hungarian",
        "Chichewa",
        "Rwanda",
        "Min_Bei",
        "Zulu",
        "Ilocano",
        "Min_Dong",
        "Quechua",
        "Hiligaynon",
        "Hmong",
        "Shona",
        "Xhosa",
        "Betawi",
        "Catalan",
        "Afrikaans",
        "Minangkabau",
        "Sotho_Southern",
        "Bikol",
        "Makua",
        "Kanuri",
        "Tswana",
        "Kikongo",
        "Luo",
        "Sukuma",
        "Tsonga",
        "Bosnian",
        "Bemba",
        "Nandi",
        "Palembang",
        "Umbundu",
        "Sotho_Northern",
        "Waray_Waray",
        "Lamani",
        "Low_German",
        "Gilaki",
        "Musi",
        "HWT_ENG",
        "Pu_Xian",
        "Kapampangan",
        "Bouyei",
        "Galician",
        "Ndebele",
        "Yao",
        "Sasak",
        "Swati",
        "Gusii",
        "Meru",
        "Wolaytta",
        "Dong",
        "Pangasinan",
        "Dimli",
        "Makassar",
        "Tumbuka",
        "Serer_Sine",
        "Occitan",
        "Tonga",
        "Muong",
        "Kiche",
        "Luguru",
        "Wu",
        "Cantonese",
        "Min_Nan",
        "Xiang",
        "Hakka",
        "Gan",
        "Chechen",
        "Kabardian",
        "Marathi",
        "Bhojpuri",
        "Maithili",
        "Awadhi",
        "Nepali",
        "Marwari",
        "Magahi",
        "Haryanvi",
        "Chattisgarhi",
        "Dhundari",
        "Konkani",
        "Kanauji",
        "Mewati",
        "Rajbanshi",
        "Garhwali",
        "Kumauni",
        "Wagdi",
        "Malvi",
        "Mewari",
        "Uyghur",
        "Telugu",
        "Kannada",
        "Tamil",
        "Devanagari",
    ]
)
RESULT_TYPES: Final = (
    "Text",
    "Pdf",
    "TextAndPdf",
    "Hocr",
    "TextAndHocr",
    "PdfAndHocr",
    "TextAndPdfAndHocr",
    "ImagePNG",
    "JSON",
)
DSR_MODES: Final = (
    "Regions",
    "DsrNoFilter",
    "DsrAndFilter",
    "NoDsrNoFilter",
    "TextDetector",
    "DsrPlusDetector",
    "PolygonalTextDetector",
    "LineDetector",
)
DSR_CONFIDENCES: Final = (
    "Default",
    "Low",
    "LowMid",
    "Mid",
    "MidHigh",
    "High",
    "Ultra",
    "All",
)

# Python field name -> the API's own key, in the order the SDK serialises them.
WIRE_NAMES: Final[Mapping[str, str]] = {
    "language": "language",
    "make_skew_correct": "makeSkewCorrect",
    "make_binarization": "makeBinarization",
    "make_spell_check": "makeSpellCheck",
    "make_contrast_correction": "makeContrastCorrection",
    "make_upsampling": "makeUpsampling",
    "dsr_mode": "dsrMode",
    "dsr_confidence": "dsrConfidence",
    "result_type": "resultType",
    "rotate": "Rotate",
}


def shorten(text: str, limit: int = 60) -> str:
    """A value quoted in a message, cut: a share user's file may hold a megabyte in one."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid spelling of `word`, for "did you mean" hints."""
    options = list(choices)
    by_lower = {c.lower(): c for c in options}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return found[0] if found else None


# What people write for a language, in its own tongue or in everyday English, that the API
# spells otherwise: a hint only (the value must still be the API's word). Without it,
# `Deutsch` is closest to `Dutch`.
LANGUAGE_HINTS: Final[Mapping[str, str]] = {
    "deutsch": "German",
    "francais": "French",
    "français": "French",
    "espanol": "Spanish",
    "español": "Spanish",
    "castellano": "Spanish",
    "italiano": "Italian",
    "portugues": "Portuguese",
    "português": "Portuguese",
    "polski": "Polish",
    "nederlands": "Dutch",
    "vlaams": "Dutch",
    "svenska": "Swedish",
    "dansk": "Danish",
    "norsk": "Norwegian",
    "suomi": "Finnish",
    "cestina": "Czech",
    "čeština": "Czech",
    "slovencina": "Slovak",
    "slovenčina": "Slovak",
    "slovenscina": "Slovene",
    "slovenščina": "Slovene",
    "slovenian": "Slovene",
    "hrvatski": "Croatian",
    "srpski": "Serbian",
    "magyar": "Hungarian",
    "romana": "Romanian",
    "română": "Romanian",
    "eesti": "Estonian",
    "lietuviu": "Lithuanian",
    "lietuvių": "Lithuanian",
    "latviesu": "Latvian",
    "latviešu": "Latvian",
    "turkce": "Turkish",
    "türkçe": "Turkish",
    "catala": "Catalan",
    "català": "Catalan",
    "русский": "Russian",
    "українська": "Ukrainan",
    "ukrainian": "Ukrainan",
    "български": "Bulgarian",
    "ελληνικά": "Greek",
    "עברית": "Hebrew",
    "العربية": "Arabic",
    "中文": "Chinese",
    "日本語": "Japanese",
    "한국어": "Korean",
    "kazakh": "Kazah",
    "belarusian": "Belorussian",
}


def check_choice(
    value: str,
    choices: tuple[str, ...],
    what: str,
    hints: Mapping[str, str] | None = None,
) -> str:
    """Return `value` if the API knows it; else raise ValueError naming the nearest valid one."""
    if value in choices:
        return value
    hint = (hints or {}).get(value.strip().lower()) or (
        nearest(value, choices) if len(value) <= 100 else None
    )
    suffix = (
        f"; did you mean `{hint}`?"
        if hint
        else f"; valid values: {', '.join(choices[:12])}, ..."
    )
    raise ValueError(f"unknown {what} `{shorten(value)}`{suffix}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Recognition settings for one file; None means "not set here, let the server decide"."""

    language: str | None = None
    make_skew_correct: bool | None = None
    make_binarization: bool | None = None
    make_spell_check: bool | None = None
    make_contrast_correction: bool | None = None
    make_upsampling: bool | None = None
    dsr_mode: str | None = None
    dsr_confidence: str | None = None
    result_type: str | None = None
    rotate: int | None = None

    def merged(self, over: Settings) -> Settings:
        """These settings with every key that `over` sets taking its value from `over`."""
        changes = {
            f.name: getattr(over, f.name)
            for f in fields(over)
            if getattr(over, f.name) is not None
        }
        return replace(self, **changes)

    def to_wire(self) -> dict[str, object]:
        """The `settings` object exactly as the API spells it, with unset keys left out."""
        return {
            wire: getattr(self, name)
            for name, wire in WIRE_NAMES.items()
            if getattr(self, name) is not None
        }
