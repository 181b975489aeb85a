"""The HTML of the checkout's pages (the ledger's `/pay/{id}` and the identity component's login),
server-rendered: no JavaScript, no CSS framework, one column and large buttons for a phone, in
French and English (issue 14). Every value is escaped here; callers pass plain text.

Machine-readable outcomes are in `data-*` attributes of the element with id `outcome`, so that
a client without a browser (ledger.api.client) and the browser tests read the same page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from aiohttp import web

Lang = str  # "fr" or "en"
LANGS = ("fr", "en")

TEXTS: dict[str, dict[Lang, str]] = {
    "title": {"fr": "Paiement Internet Plus", "en": "Internet Plus payment"},
    "price": {"fr": "Prix TTC", "en": "Price incl. VAT"},
    "publisher": {"fr": "Éditeur", "en": "Publisher"},
    "description": {"fr": "Achat", "en": "Purchase"},
    "isp": {"fr": "Votre fournisseur d'accès", "en": "Your internet provider"},
    "identify": {"fr": "M'identifier et confirmer", "en": "Identify and confirm"},
    "cancel": {"fr": "Annuler", "en": "Cancel"},
    "billed": {
        "fr": "Le montant sera ajouté à votre prochaine facture de fournisseur d'accès.",
        "en": "The amount will be added to your next internet provider bill.",
    },
    "company": {"fr": "Entreprise", "en": "Company"},
    "employee": {"fr": "Collaborateur", "en": "Employee"},
    "account": {"fr": "Compte", "en": "Account"},
    "authorized": {"fr": "Paiement accepté", "en": "Payment authorised"},
    "rejected": {"fr": "Paiement refusé", "en": "Payment refused"},
    "reserved": {"fr": "Montant réservé", "en": "Amount reserved"},
    "held": {
        "fr": "Le montant est réservé jusqu'à ce que l'éditeur le débite : seul ce qu'il débite"
        " sera ajouté à votre facture.",
        "en": "The amount is reserved until the publisher charges it: only what it charges will"
        " be added to your bill.",
    },
    "captured": {"fr": "Paiement débité", "en": "Payment charged"},
    "voided": {"fr": "Réservation annulée", "en": "Reservation cancelled"},
    "hold_expired": {"fr": "Réservation expirée", "en": "Reservation expired"},
    "pending": {
        "fr": "Paiement en cours de traitement : rechargez la page dans un instant.",
        "en": "Payment being processed: reload the page in a moment.",
    },
    "cancelled": {"fr": "Paiement annulé", "en": "Payment cancelled"},
    "expired": {"fr": "Cette page de paiement a expiré", "en": "This payment page has expired"},
    "refused": {"fr": "Confirmation refusée", "en": "Confirmation refused"},
    "reason": {"fr": "Motif", "en": "Reason"},
    "not_found": {"fr": "Paiement inconnu", "en": "No such payment"},
    "no_isp": {
        "fr": "Aucun fournisseur d'accès ne peut encore identifier ses abonnés.",
        "en": "No internet provider can identify its subscribers yet.",
    },
    "login_title": {"fr": "Identification", "en": "Sign in"},
    "login": {"fr": "Identifiant", "en": "Login"},
    "password": {"fr": "Mot de passe", "en": "Password"},
    "sign_in": {"fr": "Se connecter", "en": "Sign in"},
    "wrong_credentials": {
        "fr": "Identifiant ou mot de passe incorrect.",
        "en": "Wrong login or password.",
    },
    "confirm": {"fr": "Confirmer le paiement", "en": "Confirm the payment"},
    "confirm_intro": {
        "fr": "Vous êtes identifié. Confirmez-vous ce paiement ?",
        "en": "You are signed in. Do you confirm this payment?",
    },
    "bad_request": {"fr": "Demande invalide", "en": "Invalid request"},
}

REASONS: dict[str, dict[Lang, str]] = {
    "forged": {"fr": "identification falsifiée", "en": "forged identification"},
    "expired": {"fr": "identification expirée", "en": "identification expired"},
    "mismatch": {
        "fr": "l'identification ne correspond pas à ce paiement",
        "en": "the identification is not for this payment",
    },
    "wrong_isp": {
        "fr": "ce compte n'est pas chez ce fournisseur d'accès",
        "en": "this account is not with that internet provider",
    },
    "reused": {"fr": "identification déjà utilisée", "en": "identification already used"},
    "payment_expired": {"fr": "paiement expiré", "en": "payment expired"},
    "payment_cancelled": {"fr": "paiement annulé", "en": "payment cancelled"},
    "payment_confirmed": {"fr": "paiement déjà confirmé", "en": "payment already confirmed"},
    "isp_unavailable": {
        "fr": "ce fournisseur d'accès ne peut pas identifier ses abonnés",
        "en": "this internet provider cannot identify its subscribers",
    },
}

STYLE = (
    "body{font-family:sans-serif;margin:0;padding:1rem;max-width:32rem;margin:auto;"
    "font-size:1.1rem;line-height:1.4}"
    "h1{font-size:1.4rem}dl{display:block}dt{font-weight:bold;margin-top:.6rem}dd{margin:0}"
    ".price{font-size:2rem;font-weight:bold}"
    "button,select,input{display:block;width:100%;box-sizing:border-box;font-size:1.2rem;"
    "padding:.9rem;margin:.6rem 0;min-height:3rem}"
    "button.primary{background:#0a5;color:#fff;border:0;border-radius:.4rem}"
    "button.secondary{background:#eee;border:1px solid #999;border-radius:.4rem}"
    ".error{color:#a00;font-weight:bold}"
)


def lang_of(request: web.Request) -> Lang:
    """`?lang=` (or a form's lang), else the first of Accept-Language we speak, else French."""
    asked = request.query.get("lang", "")
    if asked in LANGS:
        return asked
    for part in request.headers.get("Accept-Language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGS:
            return code
    return "fr"


def t(key: str, lang: Lang) -> str:
    return TEXTS[key][lang]


def reason_text(reason: str, lang: Lang) -> str:
    return REASONS.get(reason, {}).get(lang, reason.replace("_", " "))


def euros(cents: int, lang: Lang) -> str:
    whole, part = divmod(cents, 100)
    if lang == "fr":
        return f"{whole:,}".replace(",", "\u202f") + f",{part:02d}\u00a0€"
    return f"€{whole:,}.{part:02d}"


def details(rows: Iterable[tuple[str, str, str]]) -> str:
    """A definition list of (id, label, value)."""
    items = "".join(
        f'<dt>{escape(label)}</dt><dd id="{escape(key)}">{escape(value)}</dd>'
        for key, label, value in rows
    )
    return f"<dl>{items}</dl>"


def hidden(fields: Mapping[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in fields.items()
    )


def outcome(status: str, reason: str = "", **data: str) -> str:
    """The machine-readable outcome of a page (see the module's docstring)."""
    attributes = "".join(f' data-{escape(k)}="{escape(v)}"' for k, v in data.items())
    return (
        f'<div id="outcome" data-status="{escape(status)}" data-reason="{escape(reason)}"'
        f"{attributes}></div>"
    )


def document(title: str, body: str, lang: Lang, status: int = 200) -> web.Response:
    html = (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def message_page(
    title_key: str, lang: Lang, status: int, reason: str = "", detail: str = ""
) -> web.Response:
    """A page that says what happened and why (every refusal of the checkout is one)."""
    body = outcome("refused" if status >= 400 else title_key, reason)
    if reason:
        body += (
            f'<p class="error">{escape(t("reason", lang))}: '
            f'<span id="reason">{escape(reason_text(reason, lang))}</span></p>'
        )
    if detail:
        body += f'<p id="detail">{escape(detail)}</p>'
    return document(t(title_key, lang), body, lang, status)
