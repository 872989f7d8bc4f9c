#!/usr/bin/env python3
"""How often the issue-8 A/B verdict rule ("both runs of one binary outside both runs of the
other and the mean ratio changed more than the larger spread") flags a row when nothing
changed: a Monte Carlo estimate, and the same tandem-bench runs relabelled so each side holds
one run of each binary.  Usage: verdict_null_rate.py [DIR]  (DIR holds out-1-before,
out-2-after, out-3-before, out-4-after from perf/run.sh --quick; default /var/tmp/quiet-ab)"""
import sys
import json,glob,random,math
# 1) Monte Carlo: false-positive rate of the verdict rule when all 4 runs come from one distribution
def verdict(rb,ra):
    mb=sum(rb)/2;ma=sum(ra)/2
    sb=abs(rb[0]-rb[1])/mb;sa=abs(ra[0]-ra[1])/ma
    rel=ma/mb;noise=max(sb,sa)
    if max(ra)<min(rb) and (1-rel)>noise: return 'worse'
    if min(ra)>max(rb) and (rel-1)>noise: return 'better'
    return 'noise'
random.seed(1)
for cv in (0.03,0.08,0.15):
    c={'worse':0,'better':0,'noise':0}
    N=200000
    for _ in range(N):
        v=[random.lognormvariate(0,cv) for _ in range(4)]
        c[verdict(v[:2],v[2:])]+=1
    print(f"null, cv {cv}: worse {c['worse']/N:.3f} better {c['better']/N:.3f} -> of 41 rows: {41*c['worse']/N:.1f} worse, {41*c['better']/N:.1f} better")
# 2) the quiet A/B relabelled: runs (B1,A2) vs (A1,B2) hold one of each binary per side, so no real effect
DIR = sys.argv[1] if len(sys.argv) > 1 else '/var/tmp/quiet-ab'
runs=['1-before','2-after','3-before','4-after']
data={}
for r in runs:
    d=json.load(open(glob.glob(f'{DIR}/out-{r}/*.json')[0]))
    data[r]={(x['backing'],x['client'],x['label']):x['tandem']['iops']/x['tgt']['iops'] for x in d['rows'] if x['tandem'].get('iops') and x['tgt'].get('iops')}
keys=list(data['1-before'])
for name,(g1,g2) in {'real: B1,B2 vs A1,A2':(('1-before','3-before'),('2-after','4-after')),
                     'relabelled: B1,A2 vs A1,B2':(('1-before','4-after'),('2-after','3-before')),
                     'relabelled: B1,A1 vs B2,A2':(('1-before','2-after'),('3-before','4-after'))}.items():
    c={'worse':0,'better':0,'noise':0}
    for k in keys:
        c[verdict([data[g][k] for g in g1],[data[g][k] for g in g2])]+=1
    print(name,c)
