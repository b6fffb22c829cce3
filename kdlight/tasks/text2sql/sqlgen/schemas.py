"""The domains the SQL generator draws from: tables, columns, value pools and their English names.

Each domain is a parent table and a child table joined by a foreign key, which is enough for every
Spider difficulty level (selection, filters, aggregates, joins, grouping, ordering, nesting) while
keeping prompts short enough for tiny models on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIRST = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Kira", "Liam", "Maya", "Nico", "Olga", "Pablo", "Rosa", "Sami", "Tara", "Ugo"]
LAST = ["Smith", "Khan", "Garcia", "Novak", "Rossi", "Chen", "Muller", "Silva", "Okafor", "Berg"]
COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Norway", "India", "Chile"]
CITIES = ["Paris", "Osaka", "Lima", "Oslo", "Cairo", "Dublin", "Perth", "Quito", "Turin", "Zagreb"]


@dataclass(frozen=True)
class Column:
    """One column: SQL name, English phrase, SQLite type and the pool its values come from.

    Numbers are drawn uniformly from `low..high`; text from `choices`.
    """

    name: str
    phrase: str
    type: str  # "text" | "number"
    choices: tuple[str, ...] = ()
    low: int = 0
    high: int = 0


@dataclass(frozen=True)
class Table:
    name: str
    singular: str
    plural: str
    label: Column  # the column that names a row ("name", "title")
    columns: tuple[Column, ...]  # descriptive columns, label excluded

    @property
    def key(self) -> str:
        return f"{self.name}_id"

    def numeric(self) -> list[Column]:
        return [c for c in self.columns if c.type == "number"]

    def categorical(self) -> list[Column]:
        return [c for c in self.columns if c.type == "text"]


@dataclass(frozen=True)
class Domain:
    """A database: `child.<parent.key>` references `parent.<parent.key>`."""

    db_id: str
    parent: Table
    child: Table
    rows: tuple[int, int] = (12, 40)  # parent rows, child rows
    extra: dict = field(default_factory=dict)


def _names(prefixes: list[str], suffixes: list[str]) -> tuple[str, ...]:
    return tuple(f"{a} {b}" for a in prefixes for b in suffixes)


PEOPLE = _names(FIRST, LAST)

DOMAINS: tuple[Domain, ...] = (
    Domain(
        "concert_hall",
        parent=Table("singer", "singer", "singers", Column("name", "name", "text", PEOPLE),
                     (Column("country", "country", "text", tuple(COUNTRIES)),
                      Column("age", "age", "number", low=18, high=70))),
        child=Table("concert", "concert", "concerts",
                    Column("concert_name", "concert name", "text",
                           _names(["Spring", "Summer", "Autumn", "Winter", "Midnight"],
                                  ["Gala", "Tour", "Festival", "Night"])),
                    (Column("year", "year", "number", low=2000, high=2023),
                     Column("theme", "theme", "text", ("Jazz", "Rock", "Opera", "Folk", "Pop")),
                     Column("attendance", "attendance", "number", low=100, high=9000))),
    ),
    Domain(
        "company_staff",
        parent=Table("department", "department", "departments",
                     Column("dept_name", "department name", "text",
                            ("Sales", "Legal", "Research", "Finance", "Support", "Design",
                             "Logistics", "Marketing")),
                     (Column("budget", "budget", "number", low=10, high=900),
                      Column("floor", "floor", "number", low=1, high=12))),
        child=Table("employee", "employee", "employees", Column("name", "name", "text", PEOPLE),
                    (Column("city", "city", "text", tuple(CITIES)),
                     Column("salary", "salary", "number", low=1000, high=9000),
                     Column("age", "age", "number", low=20, high=65))),
        rows=(8, 40),
    ),
    Domain(
        "film_studio",
        parent=Table("director", "director", "directors", Column("name", "name", "text", PEOPLE),
                     (Column("nationality", "nationality", "text", tuple(COUNTRIES)),
                      Column("birth_year", "birth year", "number", low=1940, high=1995))),
        child=Table("movie", "movie", "movies",
                    Column("title", "title", "text",
                           _names(["Silent", "Golden", "Broken", "Hidden", "Last", "Red"],
                                  ["River", "Crown", "Garden", "Mirror", "Road"])),
                    (Column("genre", "genre", "text", ("Drama", "Comedy", "Horror", "Action")),
                     Column("release_year", "release year", "number", low=1980, high=2023),
                     Column("gross", "gross", "number", low=1, high=800))),
    ),
    Domain(
        "online_shop",
        parent=Table("customer", "customer", "customers", Column("name", "name", "text", PEOPLE),
                     (Column("city", "city", "text", tuple(CITIES)),
                      Column("points", "points", "number", low=0, high=500))),
        child=Table("orders", "order", "orders",
                    Column("product", "product", "text",
                           ("lamp", "chair", "desk", "phone", "kettle", "bike", "camera",
                            "guitar", "tent", "watch")),
                    (Column("quantity", "quantity", "number", low=1, high=20),
                     Column("status", "status", "text", ("shipped", "pending", "returned")),
                     Column("price", "price", "number", low=5, high=400))),
    ),
    Domain(
        "world_atlas",
        parent=Table("country", "country", "countries",
                     Column("country_name", "country name", "text", tuple(COUNTRIES) + (
                         "Peru", "Egypt", "Spain", "Italy", "Ghana", "Nepal")),
                     (Column("continent", "continent", "text",
                             ("Europe", "Asia", "Africa", "America", "Oceania")),
                      Column("area", "area", "number", low=10, high=9000))),
        child=Table("city", "city", "cities", Column("city_name", "city name", "text",
                                                     tuple(CITIES) + ("Accra", "Kyoto", "Cusco",
                                                                      "Porto", "Bergen", "Pune")),
                    (Column("population", "population", "number", low=5, high=950),
                     Column("founded", "founded", "number", low=800, high=1950),
                     Column("climate", "climate", "text", ("dry", "humid", "cold", "mild")))),
        rows=(14, 40),
    ),
    Domain(
        "school_club",
        parent=Table("club", "club", "clubs",
                     Column("club_name", "club name", "text",
                            ("Chess", "Robotics", "Drama", "Debate", "Choir", "Hiking",
                             "Poetry", "Tennis", "Cinema", "Garden")),
                     (Column("room", "room", "number", low=100, high=130),
                      Column("category", "category", "text", ("sport", "art", "science")))),
        child=Table("student", "student", "students", Column("name", "name", "text", PEOPLE),
                    (Column("major", "major", "text",
                            ("History", "Physics", "Biology", "Music", "Law")),
                     Column("grade", "grade", "number", low=1, high=5),
                     Column("age", "age", "number", low=17, high=30))),
        rows=(10, 40),
    ),
)
