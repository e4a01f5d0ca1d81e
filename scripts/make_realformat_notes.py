"""Seeded clinical notes in the formats real hospital systems print, every identifier labelled, with decoys a
de-identifier must keep. Standard library only; the text is generated here (no third-party text).

Where scripts/make_deid_notes.py writes identifiers in free prose, this writes what discharge summaries,
emergency-department visits, clinic letters, result tables and dictated reports look like (the shapes of the
i2b2 2014 de-identification notes, with invented values): letterheads and header blocks, names in capitals and in
"Last, First" order, middle initials, lower-case signature lines, record and account numbers in the shapes
hospital systems print, pagers and extensions, dictation and transcription footers (DD:, TD:, cc:), month/year
dates and months alone, institution names, clinician lists, tables of results.

Formats come in two groups. The "dev" formats are the ones the rules were written against (on seed 1's notes);
the "held-out" formats were added afterwards and are measured only (`--formats held-out`), as are other seeds.
`--messy` turns a share of the notes into bad input: Windows line endings, tabs, form feeds between pages, a
very long line, and Chinese sentences between English ones. `--normalized` writes the notes as `strata
preprocess` hands them to its PII stage (after its normalize stage), spans moved with the text.

One jsonl record per note: {"id", "format", "text", "spans": [{"start", "end", "type", "text"}],
"decoys": [{"start", "end", "kind", "text"}]}; offsets count Unicode characters (Python str indices).
Types: NAME, DATE, AGE (over 89), PHONE, EMAIL, MRN, ID (accounts, plan and licence numbers, dictation codes),
LOCATION (streets, towns, ZIP codes), HOSPITAL.

usage: make_realformat_notes.py LEXICON_DIR OUT.jsonl [--notes 400] [--seed 1] [--formats dev|held-out|all]
                                [--messy 0.0]"""
import argparse
import json
import random

import make_deid_notes  # the prose generator beside this file: its Note and list reader

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MON3 = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
SYL = ["ka", "lo", "ver", "min", "dra", "sel", "tho", "ru", "vak", "nen", "bri", "gor", "zel", "mar", "dun",
       "fel", "ost", "quin", "rav", "tor", "ul", "wen", "yar", "bex"]
PLACE_A = ["Maple", "Pine", "Cedar", "Oak", "Birch", "Willow", "Harbor", "River", "Lake", "Stone", "Mill", "Fair",
           "Green", "North", "West", "Clear", "Elder", "Hazel", "Bright", "Wolf", "Lark", "Silver", "Granite"]
PLACE_B = ["Hollow", "Ridge", "Valley", "Point", "Crossing", "Springs", "Heights", "Park", "Grove", "Bay", "Falls",
           "Meadows", "Harbor", "Creek"]
TOWN_B = ["brook", "ford", "field", "ton", "ville", "haven", "wick", "stead", "bury", "dale", "mont", "port"]
INSTITUTIONS = ["Medical Center", "Hospital", "Memorial Hospital", "General Hospital", "Community Hospital",
                "Clinic", "Health Center", "Regional Medical Center", "Infirmary", "Family Practice",
                "Rehabilitation Hospital", "Nursing Home", "Health System"]
STREETS = ["Street", "St", "Road", "Rd", "Avenue", "Ave", "Lane", "Drive", "Way", "Court", "Boulevard", "Place"]
STATES = ["MA", "NH", "RI", "CT", "NY", "VT", "ME", "PA", "OH"]
# decoys: what notes are full of and a de-identifier must keep
EPONYMS = ["Parkinson's disease", "Bell's palsy", "Crohn's disease", "Hodgkin lymphoma", "Foley catheter",
           "Graves disease", "Barrett esophagus", "Cushing syndrome", "Murphy's sign", "Babinski sign",
           "Glasgow Coma Scale", "Addison's disease", "Alzheimer disease", "Hashimoto thyroiditis",
           "Swan-Ganz catheter", "Wolff-Parkinson-White syndrome", "Still's disease", "Kawasaki disease",
           "Raynaud phenomenon", "Wilms tumor", "Ewing sarcoma", "Sjogren syndrome", "Marfan syndrome",
           "Guillain-Barre syndrome", "Homan's sign", "Levine sign", "Holter monitor"]
DRUGS = ["lisinopril", "metoprolol", "furosemide", "atorvastatin", "aspirin", "warfarin", "metformin",
         "insulin glargine", "levothyroxine", "pantoprazole", "Lasix", "Coumadin", "Lopressor", "Zocor"]
SECTIONS = ["HISTORY OF PRESENT ILLNESS", "PAST MEDICAL HISTORY", "MEDICATIONS", "ALLERGIES", "PHYSICAL EXAMINATION",
            "HOSPITAL COURSE", "ASSESSMENT AND PLAN", "DISCHARGE MEDICATIONS", "SOCIAL HISTORY", "FAMILY HISTORY",
            "REVIEW OF SYSTEMS", "IMPRESSION", "LABORATORY DATA", "DISPOSITION", "CHIEF COMPLAINT"]
CAPS_DX = ["CONGESTIVE HEART FAILURE", "CORONARY ARTERY DISEASE", "ATRIAL FIBRILLATION", "CHEST PAIN",
           "DIABETES MELLITUS TYPE 2", "HYPERTENSION", "PNEUMONIA", "CHRONIC KIDNEY DISEASE", "SEPSIS",
           "PARKINSON'S DISEASE", "CROHN'S DISEASE", "ACUTE CHOLECYSTITIS", "RIGHT UPPER QUADRANT PAIN"]
DEPTS = ["Cardiology Clinic", "Emergency Department", "the Pain Clinic", "Radiology", "the ICU",
         "Internal Medicine", "Diabetes Clinic", "Surgical Intensive Care Unit", "Physical Therapy",
         "Gastroenterology", "the Cardiac Cath Lab", "Endocrine Clinic"]
ROLES = ["MD", "M.D.", "NP", "RN", "PA-C", "DO", "MD, PhD"]
CN_SENTENCES = ["患者自述胸闷两天。", "肝脏大小正常，胆囊壁光滑。", "建议三个月后复查超声。", "血压控制尚可。"]


class Note(make_deid_notes.Note):
    """A note being written, with its line ending (LF, or CRLF for bad input)."""

    def __init__(self, newline="\n"):
        super().__init__()
        self.nl_s = newline

    def add(self, s):
        self.text += s.replace("\n", self.nl_s)

    def nl(self, k=1):
        self.text += self.nl_s * k

    def parts(self, *items):
        """Writes a line from plain strings and (text, TYPE) / (text, "~kind") pairs."""
        for it in items:
            if isinstance(it, str):
                self.add(it)
            elif it[1].startswith("~"):
                self.decoy(it[0], it[1][1:])
            else:
                self.pii(*it)


load = make_deid_notes.load


class Person:
    def __init__(self, first, last, middle):
        self.first, self.last, self.middle = first, last, middle


class Gen:
    def __init__(self, lexicon, rng):
        self.rng = rng
        common = set(load(f"{lexicon}/common_words.txt"))
        self.first = [n for n in load(f"{lexicon}/first_names.txt") if len(n) > 2 and n.lower() not in common]
        self.last = [n for n in load(f"{lexicon}/surnames.txt") if len(n) > 3 and n.lower() not in common]
        self.places = [p for p in load(f"{lexicon}/places.txt")
                       if p.isalpha() and p.lower() not in common and len(p) > 4]

    # --- values --------------------------------------------------------------------------------------------
    def invented(self, n):
        return "".join(self.rng.choice(SYL) for _ in range(n)).capitalize()

    def person(self):
        r = self.rng
        first = self.invented(2) if r.random() < 0.1 else r.choice(self.first)
        last = self.invented(r.randint(2, 3)) if r.random() < 0.25 else r.choice(self.last)
        return Person(first, last, r.choice("ABCDEFGHJKLMNPRSTW"))

    def name(self, p, style=None):
        """A person written one of the ways notes write them."""
        r = self.rng
        style = style or r.choice(["First Last", "FIRST LAST", "LAST, FIRST", "LAST,FIRST", "Last, First",
                                   "First M. Last", "F. Last", "FIRST M. LAST", "Last, First M."])
        f, l, m = p.first, p.last, p.middle
        return {"First Last": f"{f} {l}", "FIRST LAST": f"{f} {l}".upper(), "LAST, FIRST": f"{l}, {f}".upper(),
                "LAST,FIRST": f"{l},{f}".upper(), "Last, First": f"{l}, {f}", "First M. Last": f"{f} {m}. {l}",
                "F. Last": f"{f[0]}. {l}", "FIRST M. LAST": f"{f} {m}. {l}".upper(),
                "Last, First M.": f"{l}, {f} {m}.", "Last": l, "LAST": l.upper(), "last": l.lower(),
                "First": f}[style]

    def named(self, n, p, styles):
        """A person as a NAME span; "Dr. Last" writes the title outside the span."""
        style = self.rng.choice(styles)
        if style == "Dr. Last":
            n.add("Dr. ")
            style = "Last"
        n.pii(self.name(p, style), "NAME")

    def hospital(self):
        r = self.rng
        if r.random() < 0.3:
            base = r.choice(self.places)
        elif r.random() < 0.5:
            base = f"{r.choice(PLACE_A)} {r.choice(PLACE_B)}"
        else:
            base = r.choice(PLACE_A) + r.choice(TOWN_B)
        if r.random() < 0.15:
            base = f"St. {r.choice(self.first)}'s"
        return base, r.choice(INSTITUTIONS)

    def town(self):
        r = self.rng
        return r.choice(self.places) if r.random() < 0.5 else r.choice(PLACE_A) + r.choice(TOWN_B)

    def record_no(self):
        r = self.rng
        return r.choice([
            f"{r.randint(100, 999)}-{r.randint(10, 99)}-{r.randint(10, 99)}-{r.randint(0, 9)}",
            f"{r.randint(1_000_000, 9_999_999)}", f"{r.randint(10_000_000, 99_999_999)}",
            f"{r.randint(100, 999)}{r.randint(10, 99)}{r.randint(100, 999)}",
            f"{r.choice('ABCDEFGHKMNPQRSTVWXYZ')}{r.randint(1_000_000, 9_999_999)}",
            f"{r.randint(10, 99)}-{r.randint(100, 999)}-{r.randint(100, 999)}"])

    def account_no(self):
        r = self.rng
        letters = "".join(r.choice("ABCDEFGHKMNPQRSTVWXYZ") for _ in range(2))
        return r.choice([f"{letters}{r.randint(100, 999)}/{r.randint(10_000, 99_999)}",
                         f"{r.randint(10_000_000, 99_999_999)}{r.randint(10, 99)}",
                         f"{letters}{r.randint(10_000_000, 99_999_999)}",
                         f"{r.randint(1000, 9999)}-{r.randint(1000, 9999)}-{r.randint(10, 99)}"])

    def code(self):
        """A user name or dictation code: HC71, fq3, kmr22."""
        r = self.rng
        n = r.choice([2, 2, 3])
        letters = "".join(r.choice("abcdefghjklmnpqrstvwz") for _ in range(n))
        letters = letters.upper() if r.random() < 0.5 else letters
        return f"{letters}{r.randint(1, 99)}"

    def ymd(self):
        r = self.rng
        return r.randint(1988, 2025), r.randint(1, 12), r.randint(1, 28)

    def date(self, style=None):
        y, m, d = self.ymd()
        style = style or self.rng.choice(["m/d/yyyy", "mm/dd/yy", "mm/dd/yyyy", "Month d, yyyy", "m/d/yy",
                                          "yyyy-mm-dd", "d-Mon-yyyy", "Mon d"])
        return {"m/d/yyyy": f"{m}/{d}/{y}", "mm/dd/yy": f"{m:02d}/{d:02d}/{y % 100:02d}",
                "mm/dd/yyyy": f"{m:02d}/{d:02d}/{y}", "Month d, yyyy": f"{MONTHS[m - 1]} {d}, {y}",
                "m/d/yy": f"{m}/{d}/{y % 100:02d}", "yyyy-mm-dd": f"{y}-{m:02d}-{d:02d}",
                "d-Mon-yyyy": f"{d}-{MON3[m - 1]}-{y}", "Mon d": f"{MON3[m - 1]} {d}"}[style]

    def partial_date(self):
        y, m, _ = self.ymd()
        return self.rng.choice([f"{m}/{y % 100:02d}", f"{m:02d}/{y % 100:02d}", f"{m}/{y}",
                                f"{MONTHS[m - 1]} {y}", f"{MON3[m - 1]} {y}"])

    def month(self):
        return self.rng.choice([m for m in MONTHS if m != "May"])

    def phone(self):
        r = self.rng
        a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
        return r.choice([f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}",
                         f"{a}-{b}-{c:04d} x{r.randint(100, 99999)}"])

    # --- decoys ----------------------------------------------------------------------------------------------
    def dose(self, n):
        r = self.rng
        drug = r.choice(DRUGS)
        dose = f"{drug} {r.choice([5, 10, 20, 40, 81, 250, 500])} mg {r.choice(['PO QD', 'BID', 'daily', 'q.d.', 'TID'])}"
        n.decoy(dose.upper() if r.random() < 0.3 else dose, "dose")

    def measurement(self, n):
        r = self.rng
        n.decoy(r.choice([f"BP {r.randint(95, 180)}/{r.randint(50, 100)}", f"HR {r.randint(50, 120)}",
                          f"{r.randint(2, 4)}/6 systolic murmur", f"pain {r.randint(1, 9)}/10",
                          f"strength {r.randint(3, 5)}/5", f"EF {r.randint(20, 65)}%",
                          f"creatinine {r.uniform(0.6, 3.0):.1f}", f"K {r.uniform(3.0, 5.5):.1f}",
                          f"{r.uniform(1, 9):.1f} cm", f"Apgar {r.randint(6, 9)}/{r.randint(8, 10)}",
                          f"O2 sat {r.randint(88, 100)}% on {r.randint(1, 4)}L"]), "measurement")

    def section(self, n, title=None):
        n.nl()
        n.decoy(title or self.rng.choice(SECTIONS), "header")
        n.add(":")
        n.nl()

    def clinical_sentences(self, n, k):
        r = self.rng
        for _ in range(k):
            c = r.randint(0, 6)
            if c == 0:
                n.add("Known history of ")
                n.decoy(r.choice(EPONYMS), "eponym")
                n.add(". ")
            elif c == 1:
                n.add("Continued on ")
                self.dose(n)
                n.add(". ")
            elif c == 2:
                n.add("On exam ")
                self.measurement(n)
                n.add(", ")
                self.measurement(n)
                n.add(". ")
            elif c == 3:
                n.add("Followed in ")
                n.decoy(r.choice(DEPTS), "department")
                n.add(" since ")
                n.decoy(str(r.randint(1990, 2020)), "year")
                n.add(". ")
            elif c == 4:
                n.decoy(r.choice(CAPS_DX), "diagnosis")
                n.add(". ")
            elif c == 5:
                n.add("Seen on ")
                n.decoy(r.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]), "weekday")
                n.add(" by the team; ")
                n.decoy(r.choice(EPONYMS), "eponym")
                n.add(" ruled out. ")
            else:
                n.add("Labs: ")
                self.measurement(n)
                n.add("; ")
                self.dose(n)
                n.add(". ")

    # --- pieces shared by formats ---------------------------------------------------------------------------
    def letterhead(self, n, hosp, suffix=""):
        base, kind = hosp
        up = self.rng.random() < 0.6
        n.pii(base.upper() if up else base, "HOSPITAL")
        n.add(" ")
        n.add((kind.upper() if up else kind) + suffix)
        n.nl()

    def hospital_inline(self, n, hosp):
        base, kind = hosp
        n.pii(base, "HOSPITAL")
        n.add(f" {kind}")

    def footer(self, n, doctor):
        r = self.rng
        n.nl()
        style = r.randint(0, 2)
        if style == 0:
            n.parts(("_" * r.randint(10, 30), "~rule"))
            n.nl()
            n.parts((self.name(doctor, r.choice(["First M. Last", "FIRST M. LAST", "First Last"])), "NAME"),
                    f", {r.choice(ROLES)}")
        elif style == 1:
            n.parts("Electronically signed by ", (self.name(doctor, r.choice(["First Last", "Last, First"])), "NAME"),
                    f", {r.choice(ROLES)} on ", (self.date("mm/dd/yyyy"), "DATE"),
                    f" {r.randint(1, 12)}:{r.randint(0, 59):02d} {r.choice(['AM', 'PM'])}")
        else:
            n.parts((self.name(doctor, "last"), "NAME"))
        n.nl()
        n.parts("DD: ", (self.date(r.choice(["mm/dd/yy", "mm/dd/yyyy"])), "DATE"))
        n.nl()
        n.parts("TD: ", (self.date(r.choice(["mm/dd/yy", "mm/dd/yyyy"])), "DATE"),
                f" {r.randint(1, 12)}:{r.randint(0, 59):02d} {r.choice(['A', 'P'])}")
        n.nl()
        if r.random() < 0.7:
            n.parts("Dictated By: ", (self.name(doctor, r.choice(["LAST, FIRST", "Last, First"])), "NAME"))
            n.nl()
        n.parts(r.choice(["Transcribed by: ", "T: ", "Job #: "]), (self.code(), "ID"))
        n.nl()
        cc = self.person()
        n.parts("cc: ", (self.name(cc, r.choice(["Last, First", "First Last", "LAST, FIRST", "F. Last"])), "NAME"),
                f" {r.choice(ROLES)}")
        n.nl()

    # --- dev formats: the rules were written against these ---------------------------------------------------
    def discharge(self, n):
        r = self.rng
        pt, att, pcp = self.person(), self.person(), self.person()
        hosp = self.hospital()
        self.letterhead(n, hosp, "")
        n.add(r.choice(["Discharge Summary", "DISCHARGE SUMMARY", "Discharge summary"]))
        n.nl(2)
        n.parts(r.choice(["Record #: ", "Record # ", "MRN: ", "Med Rec #: "]), (self.record_no(), "MRN"))
        n.nl()
        n.parts(r.choice(["Unit No: ", "Unit Number: ", "Unit #: "]), (self.record_no(), "MRN"))
        n.nl()
        n.parts(r.choice(["Acct: ", "Account #: ", "Acct #: "]), (self.account_no(), "ID"))
        n.nl()
        n.parts("Patient: ", (self.name(pt, r.choice(["LAST, FIRST", "LAST,FIRST", "Last, First", "FIRST LAST"])),
                              "NAME"))
        n.nl()
        n.parts("Admission Date: ", (self.date(), "DATE"))
        n.nl()
        n.parts("Discharge Date: ", (self.date(), "DATE"))
        n.nl()
        n.parts("Attending: ", (self.name(att, r.choice(["First M. Last", "LAST, FIRST", "Last, First M."])), "NAME"),
                f", {r.choice(ROLES)}")
        n.nl()
        self.section(n, "HISTORY OF PRESENT ILLNESS")
        n.parts(r.choice(["Mr. ", "Ms. ", "Mrs. "]), (self.name(pt, r.choice(["Last", "LAST"])), "NAME"),
                " is a ")
        if r.random() < 0.35:
            n.parts((f"{r.randint(90, 104)}", "AGE"), " year old ")
        else:
            n.parts((f"{r.randint(30, 88)} year old", "~measurement"), " ")
        n.add(r.choice(["man", "woman", "gentleman", "lady"]) + " with ")
        n.decoy(r.choice(CAPS_DX).lower(), "diagnosis")
        n.add(" diagnosed in ")
        n.pii(self.partial_date(), "DATE")
        n.add(", admitted through the ")
        n.decoy("Emergency Department", "department")
        n.add(". ")
        self.clinical_sentences(n, r.randint(2, 4))
        n.add("Last seen in ")
        n.pii(self.month(), "DATE")
        n.add(" by ")
        self.named(n, pcp, ["First M. Last", "Dr. Last", "First Last"])
        n.add(" at ")
        self.hospital_inline(n, self.hospital())
        n.add(". ")
        self.section(n)
        self.clinical_sentences(n, r.randint(2, 4))
        n.add("Call ")
        n.pii(self.name(att, "Last"), "NAME")
        n.add(" with questions, pager " + ("#" if r.random() < 0.4 else ""))
        n.pii(f"{r.randint(10_000, 99_999)}", "PHONE")
        n.add(". ")
        self.footer(n, att)

    def ed_visit(self, n):
        r = self.rng
        pt, doc = self.person(), self.person()
        self.letterhead(n, self.hospital(), r.choice([" EMERGENCY DEPT VISIT", " EMERGENCY DEPARTMENT RECORD"]))
        n.nl()
        n.parts((self.name(pt, r.choice(["LAST,FIRST", "LAST, FIRST", "FIRST LAST", "FIRST M. LAST"])), "NAME"),
                "   ", (self.record_no(), "MRN"), "   VISIT DATE: ", (self.date(), "DATE"))
        n.nl()
        n.add("The patient was seen and examined by ")
        self.named(n, doc, ["Dr. Last", "First Last"])
        n.add(" in the ")
        n.decoy("Emergency Department", "department")
        n.add(". ")
        self.section(n, "CHIEF COMPLAINT")
        n.decoy(r.choice(CAPS_DX), "diagnosis")
        n.add(".")
        self.section(n, "HISTORY OF PRESENT ILLNESS")
        n.parts("This is a ")
        if r.random() < 0.4:
            n.parts((f"{r.randint(90, 101)}-year-old", "AGE"))
        else:
            n.parts((f"{r.randint(20, 88)}-year-old", "~measurement"))
        n.add(" with a history of ")
        n.decoy(r.choice(EPONYMS), "eponym")
        n.add(", last hospitalized ")
        n.pii(self.partial_date(), "DATE")
        n.add(". ")
        self.clinical_sentences(n, r.randint(2, 4))
        n.add("Her daughter ")
        kin = self.person()
        n.pii(self.name(kin, r.choice(["First", "First Last"])), "NAME")
        n.add(" can be reached at ")
        n.pii(self.phone(), "PHONE")
        n.add(".")
        self.section(n, "DISPOSITION")
        n.add("Discharged home; follow up with ")
        self.named(n, self.person(), ["Dr. Last", "First M. Last"])
        n.add(" in ")
        n.decoy(r.choice(DEPTS), "department")
        n.add(".")
        n.nl(2)
        n.parts((self.name(doc, r.choice(["last", "Last, First", "LAST, FIRST"])), "NAME"), ", ",
                r.choice(["MD", "M.D."]), "   ", (self.code(), "ID"))
        n.nl()
        n.parts("D: ", (self.date("mm/dd/yy"), "DATE"), "   T: ", (self.date("mm/dd/yy"), "DATE"))
        n.nl()

    def clinic_letter(self, n):
        r = self.rng
        ref, doc, pt = self.person(), self.person(), self.person()
        hosp = self.hospital()
        self.letterhead(n, hosp)
        n.pii(f"{r.randint(1, 999)} {r.choice(PLACE_A)} {r.choice(STREETS)}", "LOCATION")
        n.nl()
        n.pii(self.town(), "LOCATION")
        n.add(f", {r.choice(STATES)} ")
        n.pii(f"{r.randint(1000, 99999):05d}", "LOCATION")
        n.nl()
        n.parts("Tel ", (self.phone(), "PHONE"), "  Fax ", (self.phone(), "PHONE"))
        n.nl(2)
        n.pii(self.date("Month d, yyyy"), "DATE")
        n.nl(2)
        n.parts("Dear Dr. ", (self.name(ref, "Last"), "NAME"), ":")
        n.nl(2)
        n.parts("RE: ", (self.name(pt, r.choice(["First Last", "FIRST LAST", "Last, First"])), "NAME"),
                "   DOB: ", (self.date("mm/dd/yyyy"), "DATE"), "   MRN: ", (self.record_no(), "MRN"))
        n.nl(2)
        n.add("Thank you for referring ")
        n.pii(self.name(pt, "First"), "NAME")
        n.add(", whom I saw in ")
        n.decoy(r.choice(DEPTS), "department")
        n.add(" on ")
        n.pii(self.date(), "DATE")
        n.add(". ")
        self.clinical_sentences(n, r.randint(3, 5))
        n.add("I will see her again in ")
        n.pii(self.month(), "DATE")
        n.add(". Please contact me at ")
        ext = r.choice(['x', 'ext. ', 'extension '])
        if ext == "x":
            n.pii(f"x{r.randint(1000, 99999)}", "PHONE")
        else:
            n.add(ext)
            n.pii(f"{r.randint(1000, 99999)}", "PHONE")
        n.add(" or ")
        n.pii(f"{doc.first[0].lower()}{doc.last.lower()}@{hosp[0].lower().replace(' ', '').replace('.', '').replace(chr(39), '')}.org",
              "EMAIL")
        n.add(".")
        n.nl(2)
        n.add("Sincerely,")
        n.nl(2)
        n.parts((self.name(doc, r.choice(["First M. Last", "First Last"])), "NAME"), f", {r.choice(ROLES)}")
        n.nl()
        n.parts("cc: ", (self.name(self.person(), r.choice(["Last, First", "F. Last"])), "NAME"), ", ",
                (self.name(self.person(), r.choice(["Last, First", "First Last"])), "NAME"))
        n.nl()

    def results_table(self, n):
        r = self.rng
        pt = self.person()
        n.parts("Name: ", (self.name(pt, r.choice(["LAST, FIRST", "LAST,FIRST", "Last, First M."])), "NAME"),
                "\tMRN: ", (self.record_no(), "MRN"), "\tAge: ")
        if r.random() < 0.4:
            n.pii(str(r.randint(90, 102)), "AGE")
        else:
            n.decoy(str(r.randint(25, 88)), "measurement")
        n.nl()
        n.parts("Ordering: ", (self.name(self.person(), r.choice(["Last, First", "LAST, FIRST"])), "NAME"), "  Loc: ", (self.hospital()[0], "HOSPITAL"), " ",
                r.choice(["4 West", "CCU", "ED", "Clinic B"]))
        n.nl(2)
        n.add("Date       Test            Result   Units")
        n.nl()
        for _ in range(r.randint(3, 6)):
            n.pii(self.date(r.choice(["mm/dd/yy", "mm/dd/yyyy"])), "DATE")
            test, val, unit = r.choice([("Na", r.randint(128, 146), "mmol/L"), ("K", round(r.uniform(3, 5.5), 1),
                                                                              "mmol/L"),
                                        ("Creat", round(r.uniform(0.5, 3), 2), "mg/dL"),
                                        ("Hgb", round(r.uniform(8, 16), 1), "g/dL"), ("WBC", round(r.uniform(3, 15), 1),
                                                                                      "K/uL"),
                                        ("INR", round(r.uniform(0.9, 3.5), 1), "")])
            n.add("   ")
            n.decoy(f"{test:<15} {val:<8} {unit}", "measurement")
            n.nl()
        n.add("Resulted by: ")
        n.pii(self.code(), "ID")
        n.add(" on ")
        n.pii(self.date("mm/dd/yyyy"), "DATE")
        n.nl()

    # --- held-out formats: added after the rules were written ------------------------------------------------
    def radiology(self, n):
        r = self.rng
        pt, rad, ref = self.person(), self.person(), self.person()
        self.letterhead(n, self.hospital(), r.choice([" DEPARTMENT OF RADIOLOGY", " Imaging Services"]))
        n.parts("EXAM: ", (r.choice(["US ABDOMEN COMPLETE", "CT CHEST W/O CONTRAST", "MRI BRAIN", "CXR PA/LAT"]),
                           "~header"))
        n.nl()
        n.parts("Patient Name: ", (self.name(pt, r.choice(["LAST, FIRST", "Last, First"])), "NAME"))
        n.nl()
        n.parts("Accession #: ", (f"{r.choice('ACDMRU')}{r.randint(1_000_000, 9_999_999)}", "ID"),
                "    MRN: ", (self.record_no(), "MRN"))
        n.nl()
        n.parts("Exam Date: ", (self.date(), "DATE"), "    Referring: ",
                (self.name(ref, r.choice(["Last, First", "First M. Last", "LAST, FIRST"])), "NAME"))
        n.nl()
        self.section(n, "COMPARISON")
        n.add("Prior study of ")
        n.pii(self.partial_date() if r.random() < 0.5 else self.date(), "DATE")
        n.add(".")
        self.section(n, "FINDINGS")
        n.add("Liver measures ")
        n.decoy(f"{r.uniform(12, 18):.1f} cm", "measurement")
        n.add(". ")
        self.clinical_sentences(n, r.randint(2, 3))
        self.section(n, "IMPRESSION")
        n.decoy(r.choice(CAPS_DX), "diagnosis")
        n.add(". Findings discussed with ")
        self.named(n, ref, ["Dr. Last", "First Last"])
        n.add(" by telephone at ")
        n.add(f"{r.randint(1, 12)}:{r.randint(0, 59):02d} on ")
        n.pii(self.date("m/d/yyyy"), "DATE")
        n.add(".")
        n.nl(2)
        n.parts("Dictated by: ", (self.name(rad, r.choice(["First M. Last", "LAST, FIRST"])), "NAME"), ", MD")
        n.nl()
        n.parts("Signed: ", (self.name(rad, "last"), "NAME"), " ", (self.code(), "ID"), " ",
                (self.date("mm/dd/yyyy"), "DATE"))
        n.nl()

    def nursing_flowsheet(self, n):
        r = self.rng
        pt = self.person()
        n.parts("FLOWSHEET\t", (self.name(pt, r.choice(["LAST,FIRST", "LAST, FIRST"])), "NAME"), "\t",
                (self.record_no(), "MRN"), "\tRm ", (f"{r.randint(100, 999)}{r.choice('AB')}", "~room"))
        n.nl()
        for _ in range(r.randint(3, 6)):
            nurse = self.person()
            n.pii(self.date(r.choice(["mm/dd/yy", "m/d/yyyy"])), "DATE")
            n.add(f"\t{r.randint(0, 23):02d}:{r.randint(0, 59):02d}\t")
            self.measurement(n)
            n.add("\t")
            n.pii(self.name(nurse, r.choice(["F. Last", "Last, First", "FIRST LAST"])), "NAME")
            n.add(f", {r.choice(['RN', 'LPN', 'CNA'])}")
            n.nl()
        n.add("Family contact: ")
        kin = self.person()
        n.pii(self.name(kin, r.choice(["First Last", "Last, First"])), "NAME")
        n.add(f" ({r.choice(['son', 'daughter', 'wife', 'husband'])}) ")
        n.pii(self.phone(), "PHONE")
        n.nl()

    def transfer_note(self, n):
        r = self.rng
        pt, doc = self.person(), self.person()
        n.add("TRANSFER NOTE")
        n.nl()
        n.add("From: ")
        self.hospital_inline(n, self.hospital())
        n.add("   To: ")
        self.hospital_inline(n, self.hospital())
        n.nl()
        n.parts("Pt: ", (self.name(pt, r.choice(["FIRST LAST", "Last, First", "First M. Last"])), "NAME"),
                "  SSN: ", (f"{r.randint(100, 899)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}", "ID"),
                "  Ins ID: ", (f"{r.choice(['XJH', 'BCB', 'MCD'])}{r.randint(100_000_000, 999_999_999)}", "ID"))
        n.nl()
        n.add("Address: ")
        n.pii(f"{r.randint(1, 999)} {r.choice(PLACE_A)} {r.choice(STREETS)}", "LOCATION")
        n.add(", ")
        n.pii(self.town(), "LOCATION")
        n.add(f", {r.choice(STATES)} ")
        n.pii(f"{r.randint(1000, 99999):05d}", "LOCATION")
        n.nl()
        n.add("Reason: ")
        n.decoy(r.choice(CAPS_DX).lower(), "diagnosis")
        n.add(" since ")
        n.pii(self.partial_date(), "DATE")
        n.add(". ")
        self.clinical_sentences(n, r.randint(2, 4))
        n.add("Accepting physician ")
        self.named(n, doc, ["First Last", "First M. Last", "Dr. Last"])
        n.add(", beeper ")
        n.pii(f"{r.randint(1000, 99999)}", "PHONE")
        n.add(". Report called to ")
        n.pii(self.name(self.person(), r.choice(["First", "First Last"])), "NAME")
        n.add(", RN.")
        n.nl()
        n.parts((self.name(doc, "last"), "NAME"), "/", (self.code().lower(), "ID"))
        n.nl()


    # --- late formats: written after the rules and the tagger were frozen, measured once -------------------
    def fax_cover(self, n):
        r = self.rng
        to, frm, pt = self.person(), self.person(), self.person()
        n.add("FAX TRANSMITTAL")
        n.nl()
        n.parts("To: ", (self.name(to, r.choice(["First Last", "Last, First", "F. Last"])), "NAME"), "   Fax: ",
                (self.phone(), "PHONE"))
        n.nl()
        n.parts("From: ", (self.name(frm, r.choice(["First M. Last", "First Last"])), "NAME"), ", ",
                r.choice(["MD", "RN", "NP"]), "   Phone: ", (self.phone(), "PHONE"))
        n.nl()
        n.parts("Date: ", (self.date(), "DATE"), "   Pages: ", (str(r.randint(2, 9)), "~measurement"))
        n.nl()
        n.parts("Re: ", (self.name(pt, r.choice(["LAST, FIRST", "First Last"])), "NAME"), ", DOB ",
                (self.date("mm/dd/yyyy"), "DATE"))
        n.nl(2)
        n.add("Please find attached the records requested on ")
        n.pii(self.date("Month d, yyyy"), "DATE")
        n.add(". ")
        self.clinical_sentences(n, r.randint(1, 3))
        n.nl()
        n.add("CONFIDENTIALITY NOTICE: this fax is intended only for the recipient named above.")
        n.nl()

    def phone_encounter(self, n):
        r = self.rng
        pt, kin, nurse = self.person(), self.person(), self.person()
        n.parts("Telephone Encounter  ", (self.date("m/d/yyyy"), "DATE"), "  ",
                (f"{r.randint(1, 12)}:{r.randint(0, 59):02d} {r.choice(['AM', 'PM'])}", "~measurement"))
        n.nl()
        n.parts("Patient: ", (self.name(pt, r.choice(["Last, First M.", "FIRST LAST", "Last, First"])), "NAME"),
                "  (", (self.record_no(), "MRN"), ")")
        n.nl()
        n.add("Caller: ")
        n.pii(self.name(kin, r.choice(["First Last", "First"])), "NAME")
        n.add(f", {r.choice(['wife', 'husband', 'son', 'daughter'])}, at ")
        n.pii(self.phone(), "PHONE")
        n.nl()
        n.add("Reason: asking about ")
        self.dose(n)
        n.add(". ")
        self.clinical_sentences(n, r.randint(1, 3))
        n.add("Advised to call back if worse; message routed to ")
        self.named(n, self.person(), ["Dr. Last", "First Last"])
        n.add(".")
        n.nl()
        n.parts((self.name(nurse, r.choice(["First Last", "F. Last"])), "NAME"), ", RN")
        n.nl()

    def operative(self, n):
        r = self.rng
        pt, surgeon, asst, anes = self.person(), self.person(), self.person(), self.person()
        self.letterhead(n, self.hospital(), " OPERATIVE REPORT")
        n.parts("PATIENT: ", (self.name(pt, r.choice(["LAST, FIRST", "LAST,FIRST"])), "NAME"), "   MR#: ",
                (self.record_no(), "MRN"))
        n.nl()
        n.parts("DATE OF OPERATION: ", (self.date(), "DATE"))
        n.nl()
        n.parts("SURGEON: ", (self.name(surgeon, r.choice(["First M. Last", "LAST, FIRST"])), "NAME"), ", M.D.")
        n.nl()
        n.parts("ASSISTANT: ", (self.name(asst, r.choice(["First Last", "F. Last"])), "NAME"))
        n.nl()
        n.parts("ANESTHESIA: General, ", (self.name(anes, "First Last"), "NAME"))
        n.nl()
        self.section(n, "PREOPERATIVE DIAGNOSIS")
        n.decoy(r.choice(CAPS_DX), "diagnosis")
        self.section(n, "PROCEDURE")
        n.add("Laparoscopic cholecystectomy. ")
        n.decoy(r.choice(EPONYMS), "eponym")
        n.add(" noted. ")
        self.clinical_sentences(n, r.randint(2, 3))
        n.add("Patient tolerated the procedure well and went to PACU in stable condition. ")
        n.add("Family (")
        n.pii(self.name(self.person(), "First"), "NAME")
        n.add(") updated in the waiting room.")
        n.nl(2)
        n.parts((self.name(surgeon, "last"), "NAME"), "/", (self.code(), "ID"), "  ", (self.date("mm/dd/yy"), "DATE"))
        n.nl()


DEV = ["discharge", "ed_visit", "clinic_letter", "results_table"]
HELD_OUT = ["radiology", "nursing_flowsheet", "transfer_note"]
LATE = ["fax_cover", "phone_encounter", "operative"]


def messy(g, n, rng):
    """Bad input in a well-formed note: a tab, a form feed, a very long line, a Chinese sentence."""
    n.add("\f" if rng.random() < 0.5 else "\t")
    n.add(rng.choice(CN_SENTENCES))
    n.add("患者")
    n.pii(rng.choice(["王磊", "李娜", "张伟"]), "NAME")
    n.add("于")
    y, m, d = g.ymd()
    n.pii(f"{y}年{m}月{d}日", "DATE")
    n.add("复诊。 ")
    # a very long line: clinical sentences without a break, with a name and a date inside it
    for _ in range(rng.randint(150, 250)):
        g.clinical_sentences(n, 1)
    n.add("Seen again by ")
    n.pii(g.name(g.person(), "First Last"), "NAME")
    n.add(" on ")
    n.pii(g.date(), "DATE")
    n.add(".\t\f")
    n.nl()


def normalized(note):
    """The note as `strata preprocess` hands it to the PII stage (its normalize stage: CR dropped, controls
    removed, runs of blanks one space, no blanks at line ends or starts, three or more newlines two), spans
    and decoys moved with it."""
    text, out, where = note["text"], [], {}
    newlines, pending = 0, False
    for i, c in enumerate(text):
        if c == "\r" or (ord(c) < 32 and c not in "\n\t"):
            continue
        if c == "\n":
            pending, newlines = False, newlines + 1
        elif c.isspace():
            pending = True
        else:
            if newlines:
                if out:
                    out.append("\n\n" if newlines >= 2 else "\n")
                newlines = 0
            elif pending and out:
                out.append(" ")
            pending = False
            out.append(c)
            where[i] = len(out) - 1
    # `out` holds single characters and newline runs: character offsets of the joined text
    offset, pos = [], 0
    for x in out:
        offset.append(pos)
        pos += len(x)
    new = dict(note, text="".join(out))
    for key in ("spans", "decoys"):
        moved = []
        for sp in note[key]:
            kept = [where[i] for i in range(sp["start"], sp["end"]) if where.get(i) is not None]
            a, b = offset[kept[0]], offset[kept[-1]] + 1
            moved.append(dict(sp, start=a, end=b, text=new["text"][a:b]))
        new[key] = moved
    return new


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lexicon")
    ap.add_argument("out")
    ap.add_argument("--notes", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", choices=["dev", "held-out", "late", "all"], default="dev")
    ap.add_argument("--messy", type=float, default=0.0)
    ap.add_argument("--normalized", action="store_true",
                    help="write the notes as strata preprocess's normalize stage leaves them")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    g = Gen(a.lexicon, rng)
    formats = {"dev": DEV, "held-out": HELD_OUT, "late": LATE, "all": DEV + HELD_OUT + LATE}[a.formats]
    with open(a.out, "w", encoding="utf-8", newline="\n") as f:
        for i in range(a.notes):
            fmt = formats[i % len(formats)]
            bad = rng.random() < a.messy
            n = Note("\r\n" if bad and rng.random() < 0.7 else "\n")
            getattr(g, fmt)(n)
            if bad:
                messy(g, n, rng)
            note = {"id": f"{fmt}-{a.seed}-{i}", "format": fmt, "text": n.text, "spans": n.spans, "decoys": n.decoys}
            if a.normalized:
                note = normalized(note)
            for s in note["spans"] + note["decoys"]:
                assert note["text"][s["start"]:s["end"]] == s["text"], (note["id"], s)
            f.write(json.dumps(note, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
