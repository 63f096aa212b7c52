/* Vector forms of the activations, written once over a small set of
 * operations that the including path defines for its vector type:
 *   VF                      the vector of floats
 *   VSET1(c) VZERO          broadcast, zero
 *   VADD VSUB VMUL VDIV     a op b
 *   VFMA(a, b, c)           a * b + c        VFMS(a, b, c)    a * b - c
 *   VMAX VABS               max(a, b), |a|
 *   VSEL_NONNEG(x, a, b)    x >= 0 ? a : b, lane by lane
 *   vexp(x)                 e^x (relative error ~1e-7, 0 for x below about -87)
 *   vexp2(hi, lo)           e^(hi + lo) for |lo| << |hi| without rounding hi + lo
 * Each function has the accuracy of the scalar reference to a few float
 * ulps, so the paths agree with the portable one to ~1e-6 relative. */
#ifndef BM_CPU_VMATH_H
#define BM_CPU_VMATH_H

/* log(1 + e^x) = max(x, 0) + log1p(e^-|x|); with w = e^-|x| in (0, 1] and
 * s = w / (2 + w) in (0, 1/3], log1p(w) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...);
 * eight terms leave a relative error below 2e-9. Past x = 20 this is x to the
 * last bit, as the reference's threshold gives. */
static inline VF vsoftplus(VF x) {
    VF w = vexp(VSUB(VZERO, VABS(x)));
    VF s = VDIV(w, VADD(w, VSET1(2.0f)));
    VF s2 = VMUL(s, s);
    VF p = VSET1(1.0f / 15);
    p = VFMA(p, s2, VSET1(1.0f / 13));
    p = VFMA(p, s2, VSET1(1.0f / 11));
    p = VFMA(p, s2, VSET1(1.0f / 9));
    p = VFMA(p, s2, VSET1(1.0f / 7));
    p = VFMA(p, s2, VSET1(1.0f / 5));
    p = VFMA(p, s2, VSET1(1.0f / 3));
    p = VFMA(p, s2, VSET1(1.0f));
    return VADD(VMAX(x, VZERO), VMUL(VADD(s, s), p));
}

/* x / (1 + e^-x) */
static inline VF vsilu(VF x) { return VDIV(x, VADD(VSET1(1.0f), vexp(VSUB(VZERO, x)))); }

/* GELU(x) = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2. erfc(z) for z >= 0 is
 * t exp(-z^2 + P(t)) with t = 1 / (1 + z/2) and P a degree-9 polynomial
 * fitted (weighted least squares, this project's own fit) to
 * log(erfc(z) / t) + z^2 on z in [0, 10]: relative error of erfc below 5e-8
 * before float rounding. The exponent -z^2 + P reaches -80, where one float
 * rounding is already 4e-6 relative after exp, so it is carried as an
 * unrounded pair: z^2 = x^2 / 2 = h + l exactly (FMA; not from z, which is
 * rounded) and P - h = s + err (two-sum).
 * Phi(x) = 1 - erfc(z)/2 for x >= 0, erfc(z)/2 below, so the negative side
 * keeps its relative accuracy too: about 3e-7 relative everywhere (the
 * results below 1e-37 lose precision as floats do). */
static inline VF vgelu(VF x) {
    VF z = VMUL(VABS(x), VSET1(0.70710678118654752f));
    VF t = VDIV(VSET1(1.0f), VFMA(z, VSET1(0.5f), VSET1(1.0f)));
    VF p = VSET1(0.1418431886314004f);
    p = VFMA(p, t, VSET1(-0.6642499104139423f));
    p = VFMA(p, t, VSET1(1.1183722898194812f));
    p = VFMA(p, t, VSET1(-0.6462106844205122f));
    p = VFMA(p, t, VSET1(-0.12068100234522233f));
    p = VFMA(p, t, VSET1(0.022117496480051846f));
    p = VFMA(p, t, VSET1(0.02775380938386185f));
    p = VFMA(p, t, VSET1(0.3880155231852803f));
    p = VFMA(p, t, VSET1(0.9984802220837496f));
    p = VFMA(p, t, VSET1(-1.2654408887808204f));
    VF xx = VMUL(x, x), h = VMUL(xx, VSET1(0.5f)), l = VMUL(VFMS(x, x, xx), VSET1(0.5f)); /* z^2 = x^2/2 = h + l */
    VF s = VSUB(p, h), bb = VSUB(s, p);
    VF err = VSUB(VADD(VSUB(p, VSUB(s, bb)), VSUB(VZERO, VADD(h, bb))), l);
    VF half_erfc = VMUL(VMUL(t, vexp2(s, err)), VSET1(0.5f));
    return VMUL(x, VSEL_NONNEG(x, VSUB(VSET1(1.0f), half_erfc), half_erfc));
}

#endif
