"""The words of the simulated marketplace: categories and their skills, countries, and the
fragments that job titles and cover letters are assembled from.

The simulation draws integer codes; `job_title` and `cover_letter` turn a row of codes into text at
write time, so no per-event string is held in memory before it is written.
"""

from __future__ import annotations

import numpy as np

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Web Development": (
        "python",
        "django",
        "javascript",
        "react",
        "node.js",
        "php",
        "laravel",
        "css",
        "html",
        "typescript",
        "vue.js",
        "wordpress",
    ),
    "Mobile Development": (
        "swift",
        "kotlin",
        "flutter",
        "react native",
        "ios",
        "android",
        "firebase",
        "dart",
        "java",
        "typescript",
    ),
    "Data Science": (
        "python",
        "pandas",
        "machine learning",
        "sql",
        "tensorflow",
        "pytorch",
        "statistics",
        "tableau",
        "r",
        "data visualization",
        "nlp",
    ),
    "Design": (
        "figma",
        "photoshop",
        "illustrator",
        "ui design",
        "ux research",
        "logo design",
        "branding",
        "sketch",
        "indesign",
    ),
    "Writing": (
        "copywriting",
        "seo writing",
        "blog writing",
        "editing",
        "proofreading",
        "technical writing",
        "ghostwriting",
        "content strategy",
    ),
    "Marketing": (
        "seo",
        "google ads",
        "facebook ads",
        "email marketing",
        "social media",
        "content marketing",
        "google analytics",
        "hubspot",
    ),
    "DevOps": (
        "aws",
        "docker",
        "kubernetes",
        "terraform",
        "linux",
        "ci/cd",
        "gcp",
        "azure",
        "ansible",
        "python",
    ),
    "Admin Support": (
        "data entry",
        "virtual assistant",
        "excel",
        "customer service",
        "transcription",
        "web research",
        "scheduling",
    ),
    "Video & Audio": (
        "video editing",
        "premiere pro",
        "after effects",
        "animation",
        "voice over",
        "audio editing",
        "motion graphics",
    ),
    "Translation": (
        "spanish",
        "french",
        "german",
        "portuguese",
        "japanese",
        "chinese",
        "arabic",
        "localization",
    ),
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)
CATEGORY_WEIGHTS = np.array([0.22, 0.10, 0.12, 0.12, 0.09, 0.10, 0.06, 0.09, 0.06, 0.04])
# typical hourly rate (USD) of a mid-level freelancer in the category, before country and quality
CATEGORY_RATE = np.array([35.0, 40.0, 45.0, 30.0, 25.0, 30.0, 55.0, 12.0, 25.0, 20.0])
CATEGORY_ROLE = (
    "developer",
    "app developer",
    "data scientist",
    "designer",
    "writer",
    "marketer",
    "engineer",
    "assistant",
    "editor",
    "translator",
)

SKILLS: tuple[str, ...] = tuple(dict.fromkeys(s for skills in CATEGORIES.values() for s in skills))
_SKILL_INDEX = {skill: i for i, skill in enumerate(SKILLS)}
CATEGORY_SKILLS: tuple[np.ndarray, ...] = tuple(
    np.array([_SKILL_INDEX[s] for s in skills]) for skills in CATEGORIES.values()
)

# ISO 3166 alpha-2, share of freelancers, rate multiplier
COUNTRIES: tuple[tuple[str, float, float], ...] = (
    ("US", 0.13, 2.0),
    ("IN", 0.17, 0.6),
    ("PK", 0.07, 0.5),
    ("PH", 0.08, 0.6),
    ("UA", 0.06, 1.0),
    ("GB", 0.05, 1.8),
    ("CA", 0.03, 1.8),
    ("DE", 0.03, 1.8),
    ("BD", 0.05, 0.45),
    ("NG", 0.04, 0.5),
    ("EG", 0.03, 0.5),
    ("BR", 0.04, 0.9),
    ("AR", 0.03, 0.9),
    ("PL", 0.03, 1.2),
    ("KE", 0.03, 0.5),
    ("MX", 0.02, 0.9),
    ("ES", 0.02, 1.4),
    ("FR", 0.02, 1.6),
    ("AU", 0.02, 1.9),
    ("VN", 0.03, 0.6),
    ("ID", 0.03, 0.55),
    ("RS", 0.02, 1.1),
    ("RO", 0.02, 1.1),
)
COUNTRY_CODES = tuple(c for c, _, _ in COUNTRIES)
COUNTRY_WEIGHTS = np.array([w for _, w, _ in COUNTRIES]) / sum(w for _, w, _ in COUNTRIES)
COUNTRY_RATE = np.array([m for _, _, m in COUNTRIES])

LEVEL_WORDS = ("Junior", "Experienced", "Senior")
PROJECTS = (
    "our startup",
    "an e-commerce store",
    "a small business",
    "a long-term project",
    "a quick fix",
    "our internal tools",
    "a product launch",
    "a nonprofit",
    "an agency client",
    "a SaaS platform",
    "a research project",
    "a mobile-first brand",
)

OPENERS = ("Hi,", "Hello,", "Dear client,", "Good day,", "Hi there,", "Greetings,")
# each has one {s1} slot: the job's skill, filled in per proposal
BODIES = (
    "I have {years} years of experience with {s1} and {s2}.",
    "I have finished {years} projects like this with {s1}, most recently alongside {s2}.",
    "Your post caught my eye: I work with {s1} every day and know {s2} well.",
    "I am a {s2} specialist with {years} years of work that needed {s1} too.",
    "I read your description carefully; {s1} is my core skill and {s2} is close behind.",
)
MIDDLES = (
    "I can start right away and will keep you updated daily.",
    "I would love to discuss the details on a short call.",
    "I already have a clear plan for the first milestone.",
    "You can see similar work in my portfolio.",
)
CLOSINGS = (
    "Best regards.",
    "Thanks for your time.",
    "Looking forward to hearing from you.",
    "Kind regards.",
    "Cheers.",
)
SPAM = (
    "Hello dear, I am expert in {s1}. I will do it fast and cheap",
    "Hi sir, {s1} expert here. 100% satisfaction guaranteed",
    "Dear hiring manager, I can do this {s1} job perfectly. Hire me now",
    "Hello, I am ready to start your {s1} task immediately. Best price",
)
SPAM_ENDINGS = ("!", "!!", "!!!", ".")
LETTER_VARIANTS = 4  # endings per letter: MIDDLES for most, SPAM_ENDINGS for spammers


def job_title(level: int, skill: int, category: int, project: int) -> str:
    return f"{LEVEL_WORDS[level]} {SKILLS[skill]} {CATEGORY_ROLE[category]} for {PROJECTS[project]}"


def letter_parts(
    spam: bool, template: int, opener: int, closing: int, years: int, s2: int
) -> tuple[str, tuple[str, ...]]:
    """A freelancer's own cover letter, split around the job's skill: the head, and its endings.

    Freelancers reuse their letter, so one proposal's text is head + skill + endings[variant].
    """
    if spam:
        head, tail = SPAM[template % len(SPAM)].split("{s1}")
        return head, tuple(tail + bang for bang in SPAM_ENDINGS)
    body = BODIES[template % len(BODIES)].format(years=years, s2=SKILLS[s2], s1="{s1}")
    head, tail = body.split("{s1}")
    close = CLOSINGS[closing % len(CLOSINGS)]
    return (
        f"{OPENERS[opener % len(OPENERS)]} {head}",
        tuple(f"{tail} {middle} {close}" for middle in MIDDLES),
    )


def json_safe(text: str) -> bool:
    """Whether text can sit between JSON quotes as it is (the fragments above all can)."""
    return text.isprintable() and '"' not in text and "\\" not in text
