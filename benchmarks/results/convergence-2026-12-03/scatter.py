# The scatter and late gain of each run's last quarter: `python scatter.py <run>/metrics.json ...` (benchmarks/README.md, "Weight averaging").
import json, sys, statistics
from rloss.study.grid import convergence
for path in sys.argv[1:]:
    m = json.load(open(path)); ev = m["evals"]
    c = convergence({"evals": ev})
    pts = [(e["iteration"], 100*e["miou"]) for e in ev]
    last = pts[-1][0]; late = [p for p in pts if p[0] >= 0.75*last]
    # residual sd around a least-squares line in the last quarter
    xs=[p[0] for p in late]; ys=[p[1] for p in late]; xb=sum(xs)/len(xs); yb=sum(ys)/len(ys)
    b=sum((x-xb)*(y-yb) for x,y in zip(xs,ys))/sum((x-xb)**2 for x in xs)
    sd=statistics.stdev([y-(yb+b*(x-xb)) for x,y in zip(xs,ys)])
    print(path.split("/")[-2], "final %.1f late %+.2f sd %.2f" % (ys[-1], 100*c["late_gain"], sd), [round(y,1) for y in ys])
