"""Seeded synthetic clinical notes, English and Chinese, with every identifier written in prose and labelled, plus
decoys that a de-identifier must keep: eponymous diseases, signs and instruments, drug doses, measurements,
codes, scores, weekdays and bare years. Standard library only; the text is generated here (no third-party text).

Names come from the lexicon's Census lists (what a hospital's notes are full of) and, for a quarter of the
surnames and a tenth of the first names, are invented from syllables so that no list holds them: those can be
found only from their context (a title, a relation, the full name, an earlier mention). Towns are half real
(the lexicon's places) and half invented. Chinese given names are built from characters; surnames come from the
lexicon's surname list (a closed set).

One jsonl record per note: {"id", "lang", "text", "spans": [{"start", "end", "type", "text"}],
"decoys": [{"start", "end", "kind", "text"}]}; offsets count Unicode characters (Python str indices).
Types: NAME, LOCATION, DATE, AGE (over 89), PHONE, EMAIL, MRN.

usage: make_deid_notes.py LEXICON_DIR OUT.jsonl [--notes 600] [--zh-share 0.35] [--seed 12]"""
import argparse
import json
import random

TITLES = ["Mr.", "Mrs.", "Ms.", "Miss", "Mr", "Mrs", "Ms"]
RELATIONS = ["son", "daughter", "husband", "wife", "brother", "sister", "niece", "nephew", "granddaughter",
             "grandson", "neighbour", "partner"]
STREETS = ["Court", "Street", "Road", "Avenue", "Lane", "Drive", "Way", "Place", "Terrace", "Close", "Boulevard",
           "St.", "Rd.", "Ave."]
STREET_WORDS = ["Birch", "Oak", "Maple", "Cedar", "Elm", "Harbor", "Mill", "Station", "Church", "Orchard",
                "Willow", "Chestnut", "Spring", "Meadow", "Ridge", "Hawthorn", "Linden", "Juniper", "Aspen"]
TOWN_A = ["Mill", "Ash", "Oak", "Brook", "Stone", "Fair", "Green", "North", "West", "Clear", "Elder", "Pine",
          "Hazel", "Cold", "Bright", "Red", "Wolf", "Lark"]
TOWN_B = ["brook", "ford", "field", "ton", "ville", "haven", "wick", "stead", "bury", "dale", "mont", "port",
          "worth", "minster"]
SYL = ["ka", "lo", "ver", "min", "dra", "sel", "tho", "ru", "vak", "nen", "bri", "gor", "zel", "mar", "dun",
       "fel", "ost", "quin", "rav", "tor", "ul", "wen", "yar", "bex"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MON3 = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# Eponyms as clinicians write them (with and without the possessive), chosen here, not taken from the lexicon's
# terminologies: whether those cover what notes say is part of the test.
EPONYMS = ["Paget disease of bone", "Paget's disease", "Bell's palsy", "Bell palsy", "Wilms tumor",
           "Hodgkin lymphoma", "non-Hodgkin lymphoma", "Sjögren syndrome", "Sjogren's syndrome", "Graves disease",
           "Crohn's disease", "Addison's disease", "Cushing syndrome", "Parkinson's disease", "Alzheimer disease",
           "Huntington disease", "Hashimoto thyroiditis", "Raynaud phenomenon", "Babinski sign", "Murphy's sign",
           "Foley catheter", "Glasgow Coma Scale", "Kawasaki disease", "Barrett esophagus", "Baker's cyst",
           "Colles fracture", "Ewing sarcoma", "Kaposi sarcoma", "Marfan syndrome", "Turner syndrome",
           "Wilson disease", "Gilbert syndrome", "Dupuytren contracture", "Tourette syndrome", "Horner syndrome",
           "Bartholin cyst", "Still's disease", "Whipple procedure", "Westermark sign", "Kerley B lines",
           "Meckel diverticulum", "Hirschsprung disease", "Guillain-Barré syndrome", "Ménière disease",
           "Epstein-Barr virus", "Lyme disease", "Ludwig angina", "Bowen disease"]
DRUGS = ["metformin", "warfarin", "amoxicillin", "atorvastatin", "lisinopril", "levothyroxine", "apixaban",
         "furosemide", "omeprazole", "prednisolone", "Metformin", "Warfarin", "Apixaban"]
CODES = ["ICD-10 M88.9", "G51.0", "C81.90", "E11.9", "ICD-10 K76.0", "CPT 76700", "LOINC 4548-4", "I10"]
CN_GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红建文辉宇鹏婷雪琳晨浩")
CN_EPONYMS = ["川崎病", "帕金森病", "阿尔茨海默病", "克罗恩病", "桥本甲状腺炎", "唐氏综合征", "霍奇金淋巴瘤",
              "马凡综合征", "格林-巴利综合征", "库欣综合征", "贝尔面瘫", "雷诺现象", "墨菲征阳性"]
CN_PLACES_P = ["北京市", "上海市", "广东省广州市", "浙江省杭州市", "江苏省南京市", "四川省成都市", "湖北省武汉市"]
CN_DISTRICT = ["海淀区", "朝阳区", "浦东新区", "天河区", "西湖区", "鼓楼区", "武侯区", "江汉区"]
CN_ROAD = ["中关村大街", "建国路", "人民路", "解放大道", "文三路", "中山北路", "科华北路", "长江路"]


class Note:
    def __init__(self):
        self.text, self.spans, self.decoys = "", [], []

    def add(self, s):
        self.text += s

    def pii(self, s, kind):
        self.spans.append({"start": len(self.text), "end": len(self.text) + len(s), "type": kind, "text": s})
        self.text += s

    def decoy(self, s, kind):
        self.decoys.append({"start": len(self.text), "end": len(self.text) + len(s), "kind": kind, "text": s})
        self.text += s


def load(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class Gen:
    def __init__(self, lexicon, rng):
        self.rng = rng
        common = set(load(f"{lexicon}/common_words.txt"))
        self.first = [n for n in load(f"{lexicon}/first_names.txt") if len(n) > 2]
        self.first_plain = [n for n in self.first if n.lower() not in common]
        last = [n for n in load(f"{lexicon}/surnames.txt") if len(n) > 3]
        self.last = [n for n in last if n.lower() not in common]
        self.places = [p for p in load(f"{lexicon}/places.txt")
                       if p.isalpha() and p.lower() not in common and len(p) > 4]
        self.cn_surnames = load(f"{lexicon}/cn_surnames.txt")

    def invented(self, n):
        return "".join(self.rng.choice(SYL) for _ in range(n)).capitalize()

    def first_name(self):
        r = self.rng.random()
        if r < 0.1:
            return self.invented(2)
        return self.rng.choice(self.first_plain)

    def surname(self):
        return self.invented(self.rng.randint(2, 3)) if self.rng.random() < 0.25 else self.rng.choice(self.last)

    def town(self):
        if self.rng.random() < 0.5:
            return self.rng.choice(TOWN_A) + self.rng.choice(TOWN_B)
        return self.rng.choice(self.places)

    def date_text(self):
        rng = self.rng
        y, m, d = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
        return rng.choice([
            f"{MONTHS[m - 1]} {d}, {y}", f"{d} {MONTHS[m - 1]} {y}", f"{MON3[m - 1]} {d}, {y}", f"{m}/{d}/{y}",
            f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}", f"{d}.{m:02d}.{y}",
            f"{MONTHS[m - 1]} {y}", f"{d}th of {MONTHS[m - 1]}"])

    def dose(self, n):
        rng = self.rng
        n.decoy(f"{rng.choice(DRUGS)} {rng.choice([5, 10, 20, 40, 250, 500, 1000])} mg", "dose")

    def measurement(self, n):
        rng = self.rng
        n.decoy(rng.choice([f"{rng.randint(90, 180)}/{rng.randint(50, 110)}", f"{rng.uniform(1, 20):.1f} cm",
                            f"{rng.uniform(3, 12):.1f} mmol/L", f"{rng.randint(1, 4)}/{rng.randint(5, 12)}",
                            f"{rng.uniform(4, 12):.1f}%"]), "measurement")

    def english(self, i):
        rng, n = self.rng, Note()
        f, s = self.first_name(), self.surname()
        title = rng.choice(TITLES)
        age = rng.randint(91, 104) if rng.random() < 0.4 else rng.randint(30, 88)
        kin_f, kin_s = self.first_name(), s if rng.random() < 0.5 else self.surname()
        doc_f, doc_s = self.first_name(), self.surname()
        # opening: the patient with a title, or by full name
        if rng.random() < 0.5:
            n.add(f"{title} ")
            n.pii(s, "NAME")
        else:
            n.pii(f"{f} {s}", "NAME")
        n.add(", ")
        if age > 89:
            n.pii(str(age), "AGE")
        else:
            n.add(str(age))
        n.add(", was seen on ")
        n.pii(self.date_text(), "DATE")
        n.add(" for ")
        n.decoy(rng.choice(EPONYMS), "eponym")
        n.add(". ")
        sentences = list(range(10))
        rng.shuffle(sentences)
        for k in sentences[:rng.randint(5, 8)]:
            if k == 0:
                if rng.random() < 0.5:
                    n.add(f"Her {rng.choice(RELATIONS)} ")
                    n.pii(f"{kin_f} {kin_s}" if rng.random() < 0.5 else kin_f, "NAME")
                    n.add(" drove her in; they live at ")
                else:
                    n.pii(rng.choice(self.first_plain), "NAME")
                    n.add(" drove her in; they live at ")
                n.pii(f"{rng.randint(2, 980)} {rng.choice(STREET_WORDS)} {rng.choice(STREETS)}", "LOCATION")
                n.add(", ")
                n.pii(self.town(), "LOCATION")
                n.add(". ")
            elif k == 1:
                n.add(rng.choice(["Her ", "His ", "The "]))
                n.decoy(rng.choice(EPONYMS), "eponym")
                n.add(rng.choice([" has resolved. ", " is stable. ", " was noted previously. "]))
            elif k == 2:
                n.add("Discussed with Dr. ")
                n.pii(doc_s if rng.random() < 0.5 else f"{doc_f} {doc_s}", "NAME")
                n.add(", who will phone ")
                n.pii(kin_f, "NAME")
                n.add(" on ")
                n.decoy(rng.choice(WEEKDAYS), "weekday")
                n.add(". ")
            elif k == 3:
                n.add("Started ")
                self.dose(n)
                n.add(" daily; BP ")
                self.measurement(n)
                n.add(", lesion ")
                self.measurement(n)
                n.add(". ")
            elif k == 4:
                n.add(f"{rng.choice(['She', 'He'])} moved from ")
                n.pii(self.town(), "LOCATION")
                n.add(" in ")
                n.decoy(str(rng.randint(1960, 2020)), "year")
                n.add(" and lives alone in ")
                n.pii(self.town(), "LOCATION")
                n.add(". ")
            elif k == 5:
                n.add("Coded as ")
                n.decoy(rng.choice(CODES), "code")
                n.add("; ")
                n.decoy(rng.choice(["GCS 15", "Apgar score 9", "MMSE 24/30", "NYHA class II", "ECOG 1"]), "score")
                n.add(". ")
            elif k == 6:
                n.add("Follow-up on ")
                n.pii(self.date_text(), "DATE")
                n.add(rng.choice([" with ", " at the clinic of Dr. "]))
                if n.text.endswith("Dr. "):
                    n.pii(self.surname(), "NAME")
                else:
                    test = rng.choice(["Doppler ultrasound", "repeat CT", "MRI of the knee", "HbA1c 7.2%"])
                    n.decoy(test, "eponym" if test.startswith("Doppler") else "measurement")
                n.add(". ")
            elif k == 7:
                known = f if n.spans[0]["text"].startswith(f) else s
                n.add(rng.choice(["Later ", "Today ", ""]))
                n.pii(known if rng.random() < 0.6 else s, "NAME")
                n.add(rng.choice([" reports less pain", " was reassured", " asked about driving"]))
                n.add(". ")
            elif k == 8:
                n.add("Contact: ")
                n.pii(f"({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}", "PHONE")
                n.add(" or ")
                n.pii(f"{kin_f.lower()}.{kin_s.lower()}{rng.randint(1, 99)}@mailbox.org", "EMAIL")
                n.add(". ")
            elif k == 9:
                n.add(rng.choice(["She is a ", "He is a ", "Patient is a "]))
                if rng.random() < 0.5:
                    n.pii(f"{rng.randint(90, 103)}-year-old", "AGE")
                else:
                    n.decoy(f"{rng.randint(40, 89)}-year-old", "measurement")
                n.add(" retired teacher, MRN ")
                n.pii(f"{rng.randint(10_000_000, 99_999_999)}", "MRN")
                n.add(". ")
        return {"id": f"en-{i}", "lang": "en", "text": n.text.strip(), "spans": n.spans, "decoys": n.decoys}

    def cn_name(self):
        s = self.rng.choice(self.cn_surnames[:400] if len(self.cn_surnames) > 400 else self.cn_surnames)
        return s + "".join(self.rng.choice(CN_GIVEN) for _ in range(self.rng.choice([1, 2, 2])))

    def cn_date(self):
        rng = self.rng
        y, m, d = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
        return rng.choice([f"{y}年{m}月{d}日", f"{m}月{d}日", f"{y}-{m:02d}-{d:02d}", f"{y}年{m}月"])

    def chinese(self, i):
        rng, n = self.rng, Note()
        pt, dr, kin = self.cn_name(), self.cn_name(), self.cn_name()
        n.add(rng.choice(["患者", "病人"]))
        n.pii(pt, "NAME")
        n.add("，")
        age = rng.randint(91, 103) if rng.random() < 0.4 else rng.randint(20, 88)
        if age > 89:
            n.pii(f"{age}岁", "AGE")
        else:
            n.add(f"{age}岁")
        n.add("，于")
        n.pii(self.cn_date(), "DATE")
        n.add("因")
        n.decoy(rng.choice(CN_EPONYMS), "eponym")
        n.add("复诊。")
        parts = list(range(6))
        rng.shuffle(parts)
        for k in parts[:rng.randint(3, 6)]:
            if k == 0:
                n.add("由")
                n.pii(dr, "NAME")
                n.add("医生审阅。")
            elif k == 1:
                n.add(rng.choice(["其子", "其女", "家属"]))
                n.pii(kin, "NAME")
                n.add("陪同，家住")
                n.pii(f"{rng.choice(CN_PLACES_P)}{rng.choice(CN_DISTRICT)}{rng.choice(CN_ROAD)}{rng.randint(1, 300)}号",
                      "LOCATION")
                n.add("。")
            elif k == 2:
                n.add("口服")
                n.decoy(rng.choice(["二甲双胍", "阿托伐他汀", "华法林", "氨氯地平"]) + f"{rng.choice([5, 10, 20, 500])}mg", "dose")
                n.add("，血压")
                n.decoy(f"{rng.randint(100, 170)}/{rng.randint(60, 100)}mmHg", "measurement")
                n.add("。")
            elif k == 3:
                n.add("嘱")
                n.pii(pt, "NAME")
                n.add("于")
                n.pii(self.cn_date(), "DATE")
                n.add("复查，联系电话")
                n.pii(f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(10_000_000, 99_999_999)}", "PHONE")
                n.add("。")
            elif k == 4:
                n.add("既往")
                n.decoy(rng.choice(CN_EPONYMS), "eponym")
                n.add("病史，肝脏大小")
                n.decoy(f"{rng.uniform(10, 16):.1f}cm", "measurement")
                n.add("。")
            elif k == 5:
                n.add(rng.choice(["主治医师", "护士"]))
                n.pii(self.cn_name(), "NAME")
                n.add("已告知家属")
                n.pii(kin, "NAME")
                n.add("。")
        return {"id": f"zh-{i}", "lang": "zh", "text": n.text, "spans": n.spans, "decoys": n.decoys}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lexicon")
    ap.add_argument("out")
    ap.add_argument("--notes", type=int, default=600)
    ap.add_argument("--zh-share", type=float, default=0.35)
    ap.add_argument("--seed", type=int, default=12)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    g = Gen(a.lexicon, rng)
    with open(a.out, "w", encoding="utf-8") as f:
        for i in range(a.notes):
            note = g.chinese(i) if rng.random() < a.zh_share else g.english(i)
            for s in note["spans"] + note["decoys"]:
                assert note["text"][s["start"]:s["end"]] == s["text"], (note["id"], s)
            f.write(json.dumps(note, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
